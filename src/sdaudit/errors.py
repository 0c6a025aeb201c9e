"""The one family of errors that are the user's to fix (a bad option, file, folder, store or model).

The command line prints any :class:`SdauditError` as one line naming what is at fault and exits with
status 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class SdauditError(Exception):
    """A mistake the user can fix: the message names the option, file, layer or store at fault."""


class UsageError(SdauditError, ValueError):
    """An option value that cannot work (out of range, contradictory, empty)."""


class OutputPathError(SdauditError, OSError):
    """An output folder or file that cannot be written (is a file, sits under a file, read-only, disk full)."""
