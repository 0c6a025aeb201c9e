"""The command line's error contract: a mistake the user can fix is one line naming the culprit, exit status 2.

:class:`Commands` is the app's command group and the one place where errors are sorted: a
:class:`~sdaudit.errors.SdauditError`, a missing, unreadable or wrong-kind path, and the device's own
errors (out of GPU memory, a torch without CUDA) become one line; anything else is a bug and keeps its
traceback (status 1). ``--debug`` adds the traceback of a user error too. :class:`Command` and
:class:`Group` list ``-h/--help`` as the flag it is.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from .errors import SdauditError

#: Errors of a path the user named (missing, unreadable, a file where a folder belongs, or the reverse):
#: the user's to fix, and their message names the path.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

err_console = Console(stderr=True)

# The click that typer's commands run on (typer >= 0.26 vendors its own as typer._click): its usage errors.
_CLICK_ERRORS = importlib.import_module(TyperGroup.__mro__[1].__module__.rsplit(".", 1)[0] + ".exceptions")


def _fail(message: str, code: int = 2) -> None:
    # soft_wrap: the message stays one line in logs and pipes (rich would break it at 80 columns)
    # escaped: a file name such as '[red]x.png' is printed as it is, not read as rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)

_NO_ARGS_IS_HELP = getattr(_CLICK_ERRORS, "NoArgsIsHelpError", ())  # click < 8.2 prints the help itself


def _usage_line(error) -> str:
    """A click usage error (unknown option or command, with click's suggestion; a bad value) as one line that
    names the command's help."""
    where = f" (help: '{error.ctx.command_path} -h')" if error.ctx is not None else ""
    return error.format_message() + where


def _device_message(error: BaseException) -> str | None:
    """One line for an error of the device rather than of sdaudit (GPU memory exhausted, a torch without CUDA),
    naming the option that avoids it; None for any other error (a bug, which keeps its traceback)."""
    torch = sys.modules.get("torch")  # no torch loaded: the error cannot be torch's
    text = str(error)
    if (torch is not None and isinstance(error, torch.OutOfMemoryError)) or "CUDA out of memory" in text:
        return ("out of GPU memory: rerun with a smaller --batch-size (1 uses the least), a smaller --size, "
                "or --device cpu")
    if isinstance(error, (AssertionError, RuntimeError)) and "not compiled with CUDA" in text:
        return "--device: this torch has no CUDA support; use --device cpu, or install a CUDA build of torch"
    return None


def _user_message(error: BaseException) -> str:
    """The one line printed for a user error: its message, with the option that gets past it where one does."""
    from .images.records import BadImageError

    message = str(error)
    if isinstance(error, BadImageError) and "--skip-bad" not in message:
        message += "; rerun with --skip-bad to skip such images and list them"
    return message


class FlagHelp:
    """``-h/--help`` shown as the flag it is: typer would give it a '<bool>' metavar."""

    def get_help_option(self, ctx: typer.Context):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(FlagHelp, TyperCommand):
    """A command whose help lists ``-h/--help`` as a flag."""


class Group(FlagHelp, TyperGroup):
    """A nested command group (``dataset``) whose help lists ``-h/--help`` as a flag."""


class Commands(FlagHelp, TyperGroup):
    """The app's command group: the one place where the user's mistakes become one line and exit status 2.

    Wrapping the group's ``invoke`` covers every command, nested groups (``dataset ...``) included;
    click's own usage errors (an unknown option or command, with its suggestion) become one line too;
    device errors (out of GPU memory, no CUDA) count as the user's too. Anything else passes through
    untouched and shows its traceback.
    """

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (SdauditError, *PATH_ERRORS) as error:
            self._debug(ctx, error)
            _fail(_user_message(error))
        except _NO_ARGS_IS_HELP:
            raise  # a bare command: click prints its help
        except _CLICK_ERRORS.UsageError as error:  # an unknown option or command, a bad value: click's words, one line
            _fail(_usage_line(error))
        except Exception as error:
            message = _device_message(error)
            if message is None:
                raise
            self._debug(ctx, error)
            _fail(message)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        """The group's own options (``sdaudit --bogus``): a usage error is one line too."""
        try:
            return super().parse_args(ctx, args)
        except _NO_ARGS_IS_HELP:
            raise
        except _CLICK_ERRORS.UsageError as error:
            _fail(_usage_line(error))

    @staticmethod
    def _debug(ctx: typer.Context, error: BaseException) -> None:
        if ctx.params.get("debug"):
            traceback.print_exception(error, file=sys.stderr)
