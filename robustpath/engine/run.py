"""Executing a plan in this machine's processes, for one run folder (``robustpath.bench``).

:func:`execute` runs every node of a plan with the ``local`` executor
(:mod:`robustpath.engine.executors`: serial in process with one worker, else a process
pool), logs each stage (:class:`robustpath.engine.log.StageLog`) and returns the nodes'
results; the first node that fails raises its error after the others finished, so a
rerun resumes from the cache. Sweeps use the same executors with their own tracker
(:mod:`robustpath.sweep.tracker`, cells and ``status.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robustpath.engine.executors import EXECUTORS
from robustpath.engine.log import StageLog
from robustpath.engine.nodes import Context
from robustpath.engine.plan import Plan
from robustpath.errors import NodeFailed, UserError


@dataclass
class _Resources:
    """A run's resources: one try per node (a failure is reported, then resumed by a
    rerun), threads as the context says."""

    retries: int = 0
    raise_errors: bool = True  # in process, a failing node raises as the stage raised

    def threads(self, stage: str) -> int:
        return 1


class RunTracker:
    """Collects node results for the executor and feeds the run log."""

    def __init__(self, plan: Plan, log: StageLog):
        self.plan, self.log = plan, log
        self.results: dict[str, dict] = {}

    def started(self, node_id: str) -> None:
        self.log.started(self.plan.nodes[node_id])

    def finished(self, node_id: str, result: dict) -> None:
        self.results[node_id] = result
        self.log.finished(self.plan.nodes[node_id], result)

    def skip(self, node_id: str) -> bool:
        """A node whose input failed is not run (its error is reported instead)."""
        return any("error" in self.results.get(d, {}) for d in self.plan.nodes[node_id].deps)

    def note(self, line: str) -> None:
        self.log._line(line)

    def tick(self) -> None:
        pass


def execute(plan: Plan, run_dir: Path, *, workers: int, progress: bool,
            threads: int | None = 1) -> dict[str, dict]:
    """Run ``plan`` into ``run_dir`` (its stage cache: ``run_dir/ckpt``) with ``workers``
    processes; returns ``node id -> result``. Raises the first failed node's error
    (a :class:`UserError` as it was, anything else as a
    :class:`robustpath.errors.NodeFailed` naming the node)."""
    exe = EXECUTORS.get("local")(workers=workers)
    log = StageLog(plan, workers=workers, out=str(run_dir))
    log.banner()
    ctx = Context.from_env(run_dir, progress and exe.stage_progress, threads)
    tracker = RunTracker(plan, log)
    exe.execute(plan, ctx, tracker, _Resources())
    for nid, r in tracker.results.items():
        if "error" in r and not r.get("upstream"):
            if r.get("user_error"):
                raise UserError(r["error"])
            raise NodeFailed(f"{plan.nodes[nid].label} failed: {r['error']} (the nodes that "
                             "finished are cached: rerun the same command to resume)")
    return tracker.results
