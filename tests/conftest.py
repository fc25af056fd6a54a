"""Session-wide test settings."""
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Evaluation oracles are cached in a temporary folder, never in the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEFACTORS_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
