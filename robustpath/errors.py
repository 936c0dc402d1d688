"""User-facing errors: one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """An error the user can act on (bad flag, unknown name, missing file)."""


class NodeFailed(RuntimeError):
    """A stage node that failed in a worker process for a reason other than the user's
    input (a bug, a killed worker). The driver holds only the worker's one-line error, so
    its own traceback would say nothing: :func:`cli_main` prints one line and exits 1.
    The nodes that finished are cached, so rerunning the command resumes."""


def _is_oom(e: BaseException) -> bool:
    """torch's allocation failures: ``torch.OutOfMemoryError`` (a RuntimeError) and the
    CPU allocator's "can't allocate memory" RuntimeError."""
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text \
        or "out of memory" in text.lower()


def _first(e: BaseException) -> str:
    line = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f" ({line})" if line else ""


def _out_of_memory(e: BaseException) -> int:
    print(f"error: out of memory{_first(e)}; lower the size that asked for it "
          "(--width, --batch-size, --t-batch, --bootstrap) and rerun", file=sys.stderr)
    return 2


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main`` so a :class:`UserError` prints one line and exits 2; so do a
    full disk (``ENOSPC``/``EDQUOT``) and a failed allocation (issue 25 D7), naming what ran
    out and what to change."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" writing {e.filename}" if e.filename else ""
            print(f"error: the disk is full{where} ({e.strerror}); free space there (or "
                  "write elsewhere with --out) and rerun: completed stages are kept, and no "
                  "half-written file is taken for a result", file=sys.stderr)
            return 2
        except MemoryError as e:
            return _out_of_memory(e)
        except NodeFailed as e:
            if _is_oom(e):
                return _out_of_memory(e)
            print(f"error: {e}", file=sys.stderr)
            return 1
        except RuntimeError as e:
            if not _is_oom(e):
                raise
            return _out_of_memory(e)
        except KeyboardInterrupt:
            print("interrupted; completed stages are kept and a rerun resumes", file=sys.stderr)
            return 130
        return 0 if rc is None else int(rc)

    return wrapper


def check_finite_loss(loss: float, params, *, stage: str, who: str, epoch: int,
                      setting: str) -> None:
    """Stop a training stage whose epoch loss or weights (``params``, the tensors about
    to be checkpointed) are NaN or infinite, in one line naming the stage, the network,
    the epoch and the setting to lower, before anything of that epoch is cached (a NaN
    checkpoint would poison every later stage and fail far away, issue 25 D2). Called
    once per epoch: one host sync per epoch, nothing per step."""
    import math

    import torch

    weights_ok = bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
    if not (math.isfinite(loss) and weights_ok):
        what = f"training loss {loss}" if not math.isfinite(loss) else "non-finite weights"
        raise UserError(f"{stage} diverged ({who}, epoch {epoch}: {what}); nothing of this "
                        f"epoch was saved; lower {setting} and rerun")
