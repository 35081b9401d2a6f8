"""The one exception type for problems the user can fix: bad input, bad config, no network.

Entry points catch it and print its message as a single line with exit code 2; anything else
is a bug and keeps its traceback.
"""

import errno

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UserError(Exception):
    """A problem with the user's input or environment, stated as what is wrong and what to do."""

    exit_code = EXIT_USER_ERROR


def one_line(e: BaseException) -> str:
    """An exception's message cut to its first line, for a log line or a UserError."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the run stopped after a whole step and saved a checkpoint."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, step: int, checkpoint) -> None:
        super().__init__(f"interrupted after step {step}")
        self.step, self.checkpoint = step, checkpoint


# Errors of the machine, not of the program: worth one line that says what to do
_OS_HINTS = {
    errno.ENOSPC: "free some space or point hydra.run.dir at another disk",
    errno.EDQUOT: "free some space or point hydra.run.dir at another disk",
    errno.EROFS: "point hydra.run.dir at a writable folder",
    errno.EACCES: "point hydra.run.dir at a folder you can write to",
    errno.EPERM: "point hydra.run.dir at a folder you can write to",
}


def os_error_line(e: OSError) -> str | None:
    """One line for a full disk, a read-only or forbidden folder; None for other OS errors.

    Chained errors (a failed write whose clean-up failed too) are walked to the first cause.
    """
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _OS_HINTS:
            where = f" writing {seen.filename}" if seen.filename else ""
            return f"{seen.strerror}{where}; {_OS_HINTS[seen.errno]}"
        seen = seen.__cause__ or seen.__context__
    return None
