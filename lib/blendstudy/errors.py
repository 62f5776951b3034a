"""The error a user can fix: its message is the whole story (no traceback)."""

from __future__ import annotations

__all__ = ["UserError", "EXIT_USER_ERROR", "EXIT_PARTIAL"]

#: exit status of a command stopped by an error the user can fix (bad file, missing path, ...)
EXIT_USER_ERROR = 2
#: exit status of a command that did its work but skipped some inputs (each reported on one line)
EXIT_PARTIAL = 1


class UserError(Exception):
    """An error whose message is the whole story for the user (no traceback)."""
