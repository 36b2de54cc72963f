"""The exception types that the command line turns into a single clear line and a non-zero exit."""


class SsrrError(Exception):
    """A user-facing error: bad input, a missing or corrupt file. The message names the thing."""


class Interrupted(SsrrError):
    """Ctrl-C (SIGINT): the command line prints the message as its one line and exits with 130 (128 + SIGINT).
    The message says what was kept: where the run stopped and the checkpoint to resume from."""

    exit_code = 130
