"""Shared pieces of the command-line interfaces (bench, report, train, zoo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once and only when it is true: appends
    ``(default: X)`` unless the help already states a default (the word "default"),
    the default is None (the help then says what None means, e.g. "the preset's"),
    or the option is a switch (``store_true``: off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # identity, not ``in``: 0 == False, and a default of 0 is a default to show
        hidden = action.default is None or action.default is False \
            or action.default == argparse.SUPPRESS or action.default == ""
        if "default" in text.lower() or hidden or not action.option_strings or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` that keeps the description's and epilog's line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit code 2, like every
    other bad input (argparse's default prints the usage block first). Help shows
    every default once (:class:`HelpFormatter`) unless another formatter is given."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def data_root(text: str) -> str:
    """argparse ``type`` of ``--data-root``: an existing folder (issue 17). A missing one
    was ignored without a word: Fashion-MNIST then came from Debian's copy. Only a given
    flag is checked; unset, the default ``./data`` may be absent. To download a dataset
    into a new folder, create it first."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} does not exist (create it, or leave "
                                         "--data-root unset)")
    return text


def split_list(text: str) -> list[str]:
    """``"a,b c"`` -> ``["a", "b", "c"]``."""
    return [p for p in str(text).replace(",", " ").split() if p]
