"""Wall-clock time per benchmark stage, printed at the end of every run (with or
without progress bars) and stored as ``timings.json`` for the run report.

Usage::

    timer = StageTimer()
    with timer("endpoint"):
        ...
    print(timer.table())

A stage entered several times (one endpoint per seed, one curve per alignment x
path) adds up; ``calls`` counts the entries. Cached stages cost well under a second,
so the table also shows what a rerun actually redid.
"""

from __future__ import annotations

import contextlib
import time


class StageTimer:
    """Accumulates ``perf_counter`` seconds per stage name, in first-use order."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._start = clock()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = self._clock()
        try:
            yield
        finally:
            self.add(stage, self._clock() - t0)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)
        self.calls[stage] = self.calls.get(stage, 0) + 1

    def total(self) -> float:
        """Seconds since the timer was made (the whole run, stages and the rest)."""
        return self._clock() - self._start

    def to_dict(self) -> dict:
        """``{"stages": [{"stage", "calls", "seconds"}, ...], "total"}``; a list, so the
        order of first use survives JSON writers that sort keys."""
        return {"stages": [{"stage": k, "calls": self.calls[k], "seconds": round(v, 3)}
                           for k, v in self.seconds.items()],
                "total": round(self.total(), 3)}

    @classmethod
    def from_dict(cls, d: dict) -> StageTimer:
        """A finished timer from :meth:`to_dict` (``total`` is its whole run)."""
        t = cls(clock=lambda: float(d["total"]))
        t._start = 0.0
        for row in d["stages"]:
            t.seconds[row["stage"]], t.calls[row["stage"]] = float(row["seconds"]), row["calls"]
        return t

    def table(self) -> str:
        """``stage  calls  seconds  share`` lines, then the total."""
        total = max(self.total(), 1e-9)
        width = max([len("stage")] + [len(k) for k in self.seconds])
        lines = [f"{'stage':<{width}}  calls  seconds  share"]
        for k, v in self.seconds.items():
            lines.append(f"{k:<{width}}  {self.calls[k]:>5}  {v:>7.1f}  {100 * v / total:>4.0f}%")
        lines.append(f"{'total':<{width}}  {'':>5}  {total:>7.1f}")
        return "\n".join(lines)
