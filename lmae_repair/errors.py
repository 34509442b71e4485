"""One exception type for problems the user can fix.

Commands catch `LmaeError` and print its message on one line instead of a traceback, so every
message must name the file (or option) and the problem.
"""


class LmaeError(Exception):
    """A user-facing error: bad input, bad option, unreadable or mismatched file."""
