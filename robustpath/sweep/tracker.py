"""The driver's view of a running sweep: node results in, cell folders and progress out.

Executors report each node as started and finished (a result dict, or one with an
``"error"``). When the last node of a cell is in, the :class:`Tracker` hands the cell
to ``on_cell`` (which writes its run folder); a cell whose node failed is marked
failed at once, and the other cells go on. Progress is one bar (robustpath.progress) over tasks whose
postfix counts cells done / running / failed and estimates the time left from the
mean duration of finished tasks of each stage; every finished or failed cell also
prints a line. ``<sweep>/status.json`` (atomic) holds each cell's state for
monitoring a long run from another shell; it is live, the only sweep-level file
written outside the sweep's atomic publication (:mod:`robustpath.sweep.driver`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from robustpath import progress as progress_mod
from robustpath.engine.log import StageLog, fmt_seconds
from robustpath.engine.nodes import describe
from robustpath.engine.plan import Plan
from robustpath.io.store import atomic_write_json


class Tracker:
    """Collects results of ``plan``'s nodes; ``slots`` is how many tasks run at once
    (for the time estimate); ``done_before`` are cells finished by an earlier run."""

    def __init__(self, plan: Plan, root: Path, *, on_cell: Callable[[str, dict], None],
                 slots: float = 1, done_before: tuple[str, ...] = (), progress: bool = True):
        self.plan, self.root, self.on_cell, self.slots = plan, Path(root), on_cell, max(slots, 1)
        self.results: dict[str, dict] = {}
        self.state: dict[str, str] = {c: "done" for c in done_before}
        self.state.update({c: "pending" for c in plan.cells})
        self.errors: dict[str, str] = {}
        self.start = self._last_tick = time.time()
        # in a log file (no terminal) a progress line every 10 s, not every event
        self.bar = progress_mod.bar(total=len(plan.nodes), desc="sweep", unit="task",
                                    progress=progress, leave=True,
                                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} tasks "
                                    "[{elapsed}{postfix}]")
        self._write_status()
        self._refresh()
        # one line per stage start and end, as robustpath.bench prints (the plan itself
        # was printed by the driver)
        self.log = StageLog(plan, workers=self.slots, out=str(root))

    # ------------------------------------------------------------ executor calls
    def started(self, node_id: str) -> None:
        """A node began: its cells count as running."""
        self.log.started(self.plan.nodes[node_id])
        for cell in self.plan.nodes[node_id].cells:
            self.cell_started(cell)

    def cell_started(self, cell: str) -> None:
        if self.state.get(cell) == "pending":
            self.state[cell] = "running"
            self._refresh()

    def finished(self, node_id: str, result: dict) -> None:
        node = self.plan.nodes[node_id]
        result = {"node": node_id, "stage": node.stage, **result}
        self.results[node_id] = result
        self.log.finished(node, result)
        self.bar.update(1)  # refreshes the line at most every mininterval
        if "error" in result and not result.get("upstream"):
            self.note(f"task failed: {node.label}: {result['error']}")
        for cell in node.cells:
            if self.state.get(cell) in ("done", "failed"):
                continue
            if "error" in result:
                why = result["error"] if not result.get("upstream") else \
                    f"an input of {node.label} failed"
                self._finish_cell(cell, "failed", f"{node.label}: {why}")
                continue
            cp = self.plan.cells[cell]
            if all(n in self.results for n in cp.nodes()):
                try:
                    self.on_cell(cell, {n: self.results[n] for n in cp.nodes()})
                except Exception as e:  # a cell that cannot be written fails alone
                    self._finish_cell(cell, "failed", f"writing the cell: {type(e).__name__}: {e}")
                else:
                    self._finish_cell(cell, "done")
        self._refresh()

    def tick(self) -> None:
        """Redraw the progress line (elapsed time, ETA) while waiting, throttled."""
        now = time.time()
        if not self.bar.disable and now - self._last_tick >= self.bar.mininterval:
            self._last_tick = now
            self._refresh()
            self.bar.refresh()

    def skip(self, node_id: str) -> bool:
        """True when every cell that needs ``node_id`` has failed (nothing to gain)."""
        return all(self.state.get(c) == "failed" for c in self.plan.nodes[node_id].cells)

    def in_flight(self) -> int:
        return sum(s == "running" for s in self.state.values())

    def finalized(self, cell: str) -> bool:
        return self.state.get(cell) in ("done", "failed")

    def note(self, line: str) -> None:
        if self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line)

    def close(self) -> None:
        self._refresh()
        self.bar.close()
        self._write_status()

    def tasks_record(self) -> dict:
        """This run's tasks (``tasks.json``; the driver publishes it with the sweep's other
        outputs, :func:`robustpath.sweep.driver.run_sweep`)."""
        return {"started": self.start, "seconds": time.time() - self.start,
                "tasks": [describe(r) for r in self.results.values()]}

    # ------------------------------------------------------------ summaries
    def counts(self) -> dict[str, int]:
        out = {"done": 0, "running": 0, "failed": 0, "pending": 0}
        for s in self.state.values():
            out[s] += 1
        return out

    def eta(self) -> tuple[float, bool]:
        """Seconds left (remaining tasks x their stage's mean duration / slots) and
        whether a stage with tasks left has no finished task to go by yet."""
        means: dict[str, list[float]] = {}
        for r in self.results.values():
            if "seconds" in r:
                means.setdefault(r["stage"], []).append(r["seconds"])
        left, unknown = 0.0, False
        for nid, node in self.plan.nodes.items():
            if nid in self.results or self.skip(nid):
                continue
            if node.stage in means:
                left += sum(means[node.stage]) / len(means[node.stage])
            else:
                unknown = True
        return left / self.slots, unknown

    # ------------------------------------------------------------ internals
    def _finish_cell(self, cell: str, state: str, error: str | None = None) -> None:
        self.state[cell] = state
        if error:
            self.errors[cell] = error
        self._compact(cell)
        self._write_status()
        what = f"FAILED: {error}" if error else "done"
        self.note(f"cell {cell} {what} [{fmt_seconds(time.time() - self.start)}; "
                  f"{self._counts_text()}]")

    def _compact(self, cell: str) -> None:
        """Drop the arrays of results no unfinished cell needs (keeps memory flat)."""
        for nid in self.plan.cells[cell].nodes():
            if nid in self.results and all(self.finalized(c) for c in self.plan.nodes[nid].cells):
                self.results[nid] = describe(self.results[nid])

    def _counts_text(self) -> str:
        c = self.counts()
        eta, unknown = self.eta()
        eta_txt = "?" if unknown and not eta else fmt_seconds(eta) + ("+" if unknown else "")
        return (f"cells {c['done']}/{len(self.state)} done, {c['running']} running, "
                f"{c['failed']} failed, ETA {eta_txt}")

    def _refresh(self) -> None:
        if not self.bar.disable:
            self.bar.set_postfix_str(self._counts_text(), refresh=False)

    def _write_status(self) -> None:
        atomic_write_json(self.root / "status.json", {
            "counts": self.counts(),
            "cells": {c: {"state": s, **({"error": self.errors[c]} if c in self.errors else {})}
                      for c, s in self.state.items()}})
