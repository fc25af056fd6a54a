"""The one exception type the command line turns into a clean error line."""


class FacefactorsError(Exception):
    """A user-facing error: bad input, bad config, bad checkpoint.

    The message names the offending file, key or value; the CLI prints it on one
    line and exits non-zero without a traceback.
    """
