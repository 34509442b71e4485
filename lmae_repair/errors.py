"""One exception type for problems the user can fix, and the `--debug` switch.

Commands catch `LmaeError` and print its message on one line instead of a traceback, so every
message must name the file (or option) and the problem. Anything else that goes wrong with one
pair is turned into a one-line message too (`unexpected`), so that one odd file cannot stop a
run over a whole dataset; `--debug` (which sets `DEBUG["on"]`) lets those exceptions through
with their tracebacks instead.
"""

DEBUG = {"on": False}


class LmaeError(Exception):
    """A user-facing error: bad input, bad option, unreadable or mismatched file."""


def unexpected(context: str, exc: BaseException) -> str:
    """One line for an exception nobody anticipated, naming what was being done."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{context}: unexpected {type(exc).__name__}{': ' + text if text else ''} (rerun with --debug for the traceback)"


def pair_error(context: str, exc: Exception) -> str:
    """The one-line message for a pair that failed with `exc`: an LmaeError's own message, any
    other exception as `unexpected`, or that exception raised again under --debug."""
    if isinstance(exc, LmaeError):
        return str(exc)
    if DEBUG["on"]:
        raise exc
    return unexpected(context, exc)
