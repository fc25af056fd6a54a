"""RunningWhitening: unit covariance after whitening, small directions scaled back up, statistics
saved with the module, the cached matrix refreshed on every update and load."""
from __future__ import annotations

import pytest
import torch

from facefactors.nn.losses import label_dependence
from facefactors.nn.whitening import RunningWhitening


def correlated(n, g, small=0.01):
    """(n, 4) codes: two strongly correlated dims, one tiny dim, one ordinary one."""
    a, b, c, d = torch.randn(4, n, generator=g)
    return torch.stack([3 * a, 3 * a + 0.5 * b, small * c, d], dim=1)


def test_whitened_codes_have_unit_covariance():
    g = torch.Generator().manual_seed(0)
    w = RunningWhitening(4, momentum=0.05, shrink=1e-6)
    for _ in range(200):
        w.update(correlated(64, g) + 5.0)
    x = w(correlated(4096, g) + 5.0)
    cov = torch.cov(x.T)
    assert torch.allclose(x.mean(0), torch.zeros(4), atol=0.1)
    assert torch.allclose(cov, torch.eye(4), atol=0.15)


def test_a_small_direction_that_carries_a_label_is_seen_after_whitening():
    """A class signal in a direction 100x smaller than the others hardly moves the per-dim
    dependence of a mixed code; after whitening it shows in full."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(256) % 4
    big = torch.randn(256, 7, generator=g) * 10.0
    small = 0.1 * (y.float() + 0.3 * torch.randn(256, generator=g))
    rot = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    x = torch.cat([big, small[:, None]], dim=1) @ rot            # the signal is spread over every dim
    w = RunningWhitening(8, shrink=1e-6)
    for _ in range(50):
        w.update(x)
    raw, white = label_dependence(x, y, 4), label_dependence(w(x), y, 4)
    shuffled = label_dependence(x, y[torch.randperm(256, generator=g)], 4)   # no signal at all
    assert raw < 1.5 * shuffled                              # raw: the signal is lost in the noise
    assert white > 4 * raw
    # shrinking the carrier does not hide it: the whitening scales it back up
    x2 = torch.cat([big, 0.3 * small[:, None]], dim=1) @ rot
    w2 = RunningWhitening(8, shrink=1e-6)
    for _ in range(50):
        w2.update(x2)
    assert label_dependence(w2(x2), y, 4) == pytest.approx(float(white), rel=0.05)


def test_statistics_are_buffers_and_the_matrix_follows_them():
    g = torch.Generator().manual_seed(2)
    w = RunningWhitening(4)
    w.update(correlated(64, g))
    m1 = w.matrix().clone()
    assert torch.equal(w.matrix(), m1)                       # cached until the statistics change
    w.update(correlated(64, g) * 2.0)
    assert not torch.allclose(w.matrix(), m1)
    state = w.state_dict()
    assert set(state) == {"mean", "cov", "updates"} and int(state["updates"]) == 2
    fresh = RunningWhitening(4)
    fresh.matrix()                                           # a cached identity map ...
    fresh.load_state_dict(state)                             # ... is dropped on load
    assert torch.allclose(fresh.matrix(), w.matrix())
    # no gradient reaches the statistics; the input gets one
    x = correlated(8, g).requires_grad_(True)
    w(x).sum().backward()
    assert x.grad is not None and not w.cov.requires_grad
    w.update(x[:1])                                          # one row shows no spread: ignored
    assert int(w.updates) == 2
    with pytest.raises(ValueError, match="RunningWhitening"):
        RunningWhitening(0)


def test_statistics_and_whitening_stay_fp32_under_bf16_autocast():
    """Mixed-precision training (train.precision=bf16) must neither break the fp32 buffers' update
    nor round the small directions away: both match the fp32 computation."""
    g = torch.Generator().manual_seed(1)
    batches = [correlated(64, g) for _ in range(20)]
    plain, mixed = RunningWhitening(4), RunningWhitening(4)
    for x in batches:
        plain.update(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed.update(x)
    assert mixed.cov.dtype == torch.float32 and torch.allclose(mixed.cov, plain.cov)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixed(batches[0])
    assert out.dtype == torch.float32 and torch.allclose(out, plain(batches[0]), atol=1e-5)
