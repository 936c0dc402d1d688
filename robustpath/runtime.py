"""How a run computes, separated from what it computes.

A :class:`Runtime` holds the settings that change speed or memory but not results
(device, autocast, the :mod:`robustpath.models.fuse` rewrites, channels-last weights on CPU,
threads, ``t_batch``, progress bars). None of them enters a cache key: stage keys are
built from result-relevant settings only (:mod:`robustpath.engine.stages`), so two runs that
differ only in their runtime share every cache entry.

It replaces the module globals that used to be flipped and restored by hand
(``fuse.ENABLED``, two ``CHANNELS_LAST_CPU``): an entry point states its runtime once,
``with runtime.use(Runtime(fuse=False)): ...``, and the code below it reads
:func:`current`. The value lives in a :class:`contextvars.ContextVar`, so it is scoped
to the ``with`` block (restored on exceptions) and does not leak between threads.

Known difference in float rounding: ``fuse`` and ``channels_last_cpu`` compute the same
function with other rounding; results agree to float tolerance, not bit for bit, which
is why they are runtime settings (benchmarks/RESULTS.md measures their speed).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Runtime:
    """``device``: auto | cpu | cuda[:N]; ``amp``: bfloat16 autocast in training stages
    on CUDA (no-op on CPU); ``fuse``: :func:`robustpath.models.fuse.fast_view` in attacks,
    evaluation and training; ``channels_last_cpu``: NHWC convolution weights on CPU
    (attacks and endpoint training); ``threads``: torch intra-op threads (None: leave
    as is); ``t_batch``: t evaluated at once with vmap; ``progress``: progress bars (:mod:`robustpath.progress`);
    ``workers``: processes running independent stage nodes at once, one torch thread
    each (None: the usable cores; :mod:`robustpath.engine.executors`)."""

    device: str = "auto"
    amp: bool = True
    fuse: bool = True
    channels_last_cpu: bool = True
    threads: int | None = None
    t_batch: int = 1
    progress: bool = True
    workers: int | None = None

    @classmethod
    def of(cls, cfg, **overrides) -> Runtime:
        """The runtime settings a config (bench / zoo / sweep cell) carries."""
        fields = {k: getattr(cfg, k) for k in ("device", "amp", "fuse", "t_batch")
                  if hasattr(cfg, k)}
        return cls(**{**fields, **overrides})

    def with_(self, **changes) -> Runtime:
        return replace(self, **changes)


_CURRENT: contextvars.ContextVar[Runtime] = contextvars.ContextVar(
    "robustpath_runtime", default=Runtime())  # noqa: B039  (a frozen dataclass)


def current() -> Runtime:
    """The runtime of the innermost :func:`use` block (the defaults outside any)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(rt: Runtime) -> Iterator[Runtime]:
    """Run the block under ``rt`` (threads set for the block, restored after)."""
    token = _CURRENT.set(rt)
    threads = torch.get_num_threads()
    if rt.threads:
        torch.set_num_threads(rt.threads)
    try:
        yield rt
    finally:
        if rt.threads:
            torch.set_num_threads(threads)
        _CURRENT.reset(token)
