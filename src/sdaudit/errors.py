"""The one family of errors that are the user's to fix (a bad option, file, folder, store or model).

The command line prints any :class:`SdauditError` (and a missing, unreadable or wrong-kind path) as one
line naming what is at fault and exits with status 2 (``sdaudit --debug`` adds the traceback); every other
exception is a bug and keeps its traceback. Each module's own user errors (``LayerError``,
``BadImageError``, ``ModelSpecError``, ``StoreError``, ``LabelFileError``...) derive from
:class:`SdauditError` and keep their old builtin base (``ValueError``, ``RuntimeError``), so existing
``except ValueError`` code still catches them.
"""

from __future__ import annotations


class SdauditError(Exception):
    """A mistake the user can fix: the message names the option, file, layer or store at fault."""


class UsageError(SdauditError, ValueError):
    """An option value that cannot work (out of range, contradictory, empty)."""


class OutputPathError(SdauditError, OSError):
    """An output folder or file that cannot be written (is a file, sits under a file, read-only, disk full)."""
