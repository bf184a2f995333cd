"""Errors a person acts on: printed as one line, never as a traceback.

:class:`UserError` is the base of every failure the CLI reports as ``cpn:
error: ...`` (a bad job file, an API answer, a missing daemon).  It lives
here, outside :mod:`node.cli`, so that the job-file reader and the API client
can raise it without importing the command line.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A user-facing failure with the process exit status ``code`` (default 1)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
