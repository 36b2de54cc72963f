"""The one exception type that the command line turns into a single clear line and a non-zero exit."""


class SsrrError(Exception):
    """A user-facing error: bad input, a missing or corrupt file. The message names the thing."""
