"""Shared pieces of the command-line interfaces (bench, report, train, zoo)."""

from __future__ import annotations

import argparse

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit code 2, like every
    other bad input (argparse's default prints the usage block first)."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def split_list(text: str) -> list[str]:
    """``"a,b c"`` -> ``["a", "b", "c"]``."""
    return [p for p in str(text).replace(",", " ").split() if p]
