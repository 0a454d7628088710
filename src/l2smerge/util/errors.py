"""The one exception type the CLI turns into a one-line message and exit code 2."""


class L2SError(Exception):
    """A user-facing error: bad input, missing file, unknown option.

    The message must name the thing at fault (file, tensor, line, key) and, where it helps,
    what to do about it. The CLI prints it as a single line and exits with code 2.
    """

    exit_code = 2


class L2SWarning(UserWarning):
    """Something the user should know about a result that is still produced: an input that
    changes nothing, an output that equals an input. The CLI prints it as one line."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, L2SWarning, stacklevel=2)
