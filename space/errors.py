"""The one exception type for a user's mistake.

Entry points catch ``UserError`` and print its message on one line with exit code 2; any other
exception is a bug of ours and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names what was wrong, the value, and what is allowed."""

    def __str__(self) -> str:
        # One line, whatever the message was built from.
        return " ".join(super().__str__().split())
