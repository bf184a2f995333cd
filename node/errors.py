"""Errors a person acts on: printed as one line, never as a traceback.

:class:`UserError` is the base of every failure the CLI reports as ``cpn:
error: ...`` (a bad job file, an API answer, a missing daemon).  It lives
here, outside :mod:`node.cli`, so that the job-file reader and the API client
can raise it without importing the command line.

:class:`ExitCode` is the table of exit statuses every ``cpn`` command uses
(docs/submitters.md, "Exit status"): a script decides on the number, a person
reads the one-line message.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode", "UserError", "ApiAnswerError"]


class ExitCode(IntEnum):
    """Exit statuses of ``cpn``, the same for every command."""

    OK = 0  #: success (a job: it exited 0 and its outputs verified)
    ERROR = 1  #: anything not below; the message says what (e.g. no such job)
    BAD_INPUT = 2  #: the command line, or a file it names (job file, config), is wrong
    NO_PROVIDER = 3  #: no provider matched the requirement
    REFUSED = 4  #: providers were asked and none agreed (refused, too dear, unreachable)
    JOB_FAILED = 5  #: the job ran and failed: non-zero exit, OOM-killed, timed out, lost
    TRANSFER_FAILED = 6  #: image, inputs or outputs did not arrive or did not verify
    NO_DAEMON = 7  #: the local daemon is not running or does not answer
    CANCELLED = 8  #: the job was cancelled
    START_FAILED = 9  #: ``cpn node run`` could not start (data dir in use, key, address)
    INTERRUPTED = 130  #: Ctrl-C
    BROKEN_PIPE = 141  #: stdout was closed early (``cpn jobs | head``), as SIGPIPE would


class UserError(Exception):
    """A user-facing failure with the process exit status ``code`` (default 1)."""

    def __init__(self, message: str, code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


class ApiAnswerError(UserError):
    """The daemon answered with an error: ``status`` (HTTP) and ``reason`` (its code)."""

    def __init__(self, message: str, *, status: int, reason: str, detail: str) -> None:
        code = ExitCode.BAD_INPUT if status == 400 else ExitCode.ERROR
        super().__init__(message, code)
        self.status = status
        self.reason = reason
        self.detail = detail  #: the daemon's message alone
