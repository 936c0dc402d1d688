"""Interleaved wall-clock timing: ratios that survive a noisy, shared machine.

Each round runs every variant once, in an order rotated from round to round, so slow
drifts of the machine's load hit all variants alike. A speed-up is the median over
rounds of the per-round time ratio; a throughput uses the median time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per round for each variant name, in insertion order."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def best(self, name: str) -> float:
        return min(self.seconds[name])

    def speedup(self, name: str, baseline: str) -> float:
        """Median over rounds of ``t(baseline) / t(name)`` (> 1: ``name`` is faster)."""
        ratios = [b / t for b, t in zip(self.seconds[baseline], self.seconds[name])]
        return statistics.median(ratios)

    def spread(self, name: str, baseline: str) -> tuple[float, float]:
        ratios = [b / t for b, t in zip(self.seconds[baseline], self.seconds[name])]
        return min(ratios), max(ratios)


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1,
                device: torch.device | None = None,
                progress: Callable[[str], None] | None = None) -> Timings:
    """Time ``variants`` (name -> zero-argument callable) over ``rounds`` rotated rounds."""
    device = device if device is not None else torch.device("cpu")
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    sync(device)
    out = Timings({name: [] for name in names})
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            out.seconds[name].append(time.perf_counter() - start)
        if progress:
            progress(f"round {r + 1}/{rounds}")
    return out
