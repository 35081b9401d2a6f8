"""The one exception type for problems the user can fix: bad input, bad config, no network.

Entry points catch it and print its message as a single line with exit code 2; anything else
is a bug and keeps its traceback.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input or environment, stated as what is wrong and what to do."""

    exit_code = EXIT_USER_ERROR


def one_line(e: BaseException) -> str:
    """An exception's message cut to its first line, for a log line or a UserError."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
