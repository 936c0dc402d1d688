"""User-facing errors: one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """An error the user can act on (bad flag, unknown name, missing file)."""


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main`` so a :class:`UserError` prints one line and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; completed stages are kept and a rerun resumes", file=sys.stderr)
            return 130
        return 0 if rc is None else int(rc)

    return wrapper
