"""The run log: a start banner, then one line when a stage starts and when it ends.

Plain lines on stdout (flushed; never a carriage return, so a redirected log reads as
written), printed with or without progress bars and readable with several workers:
the lines are the driver's, not the workers'. The banner says what will run (nodes per
stage), where it writes and an estimate of the duration; each line says the elapsed
time and the estimate of what is left.

The estimate: nodes left x their stage's seconds per node / workers. A stage's seconds
per node are measured in this run once one of its nodes has finished; before that they
come from :data:`NODE_SECONDS` (the committed default run, ``--preset quick`` on 2
workers of one torch thread on an idle 2-core CPU:
results/fashion-mnist-cnn-small-quick/timings.json, seconds / calls)
scaled by the node's work relative to that run (examples x epochs x attack steps). A
cached node takes about a second, so a rerun finishes well before the banner's estimate.
"""

from __future__ import annotations

import sys
import time

from robustpath.engine import path_stages
from robustpath.engine.plan import Plan, stage_label

# seconds per node of the default quick run on 2 workers (timings.json / calls); a path
# stage's is its registration's (robustpath.engine.path_stages)
NODE_SECONDS = {"endpoint": 37.3, "align": 0.8, "curve": 22.6, "eval": 26.3}


def _work(stage: str, cfg) -> float:
    """A node's work in units that its cost grows with (examples x epochs x steps)."""
    n_tr = cfg.train_subset or 60000
    n_te = cfg.test_subset or 10000
    if stage == "endpoint":
        return n_tr * cfg.endpoint_epochs * (cfg.train_steps + 1)
    if stage == "curve":
        return n_tr * cfg.curve_epochs * (cfg.train_steps + 1)
    if stage == "eval":
        return n_te * cfg.t_points * (cfg.eval_steps + 1) * max(cfg.restarts, 1)
    if stage in NODE_SECONDS or not path_stages.is_path_stage(stage):
        return 1.0
    return path_stages.get(stage).work(cfg)


def node_seconds(stage: str) -> float:
    """Seconds per node of ``stage`` in the default quick run."""
    if stage in NODE_SECONDS or not path_stages.is_path_stage(stage):
        return NODE_SECONDS.get(stage, 10.0)
    return path_stages.get(stage).seconds


def estimates(plan: Plan) -> dict[str, float]:
    """Estimated seconds of each node of ``plan`` from scratch: its stage's seconds per
    node in the default quick run, scaled by the node's work relative to that run."""
    from robustpath.config import from_preset

    ref = from_preset("quick")
    return {nid: node_seconds(n.stage) * _work(n.stage, n.cfg) / max(_work(n.stage, ref), 1e-9)
            for nid, n in plan.nodes.items()}


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class StageLog:
    """Log lines of a plan's execution; ``workers``: nodes run at once."""

    def __init__(self, plan: Plan, *, workers: float = 1, out: str = "", stream=None):
        self.plan, self.workers, self.out = plan, max(float(workers), 1.0), out
        self.stream = stream or sys.stdout
        self.start = time.time()
        self.total = plan.counts()
        self.begun: dict[str, int] = {}
        self.ended: dict[str, int] = {}
        self.stage_start: dict[str, float] = {}
        self.measured: dict[str, list[float]] = {}
        self.prior = estimates(plan)
        self.done: set[str] = set()

    def _line(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{fmt_seconds(time.time() - self.start)}] {text}",
              file=self.stream, flush=True)

    def left(self) -> float:
        """Estimated seconds left (nodes not finished, per stage means, / workers)."""
        s = 0.0
        for nid, node in self.plan.nodes.items():
            if nid in self.done:
                continue
            m = self.measured.get(node.stage)
            s += sum(m) / len(m) if m else self.prior[nid]
        return s / self.workers

    def banner(self) -> None:
        counts = ", ".join(f"{stage_label(k)} {v}" for k, v in self.total.items())
        w = int(self.workers)
        self._line(f"plan: {len(self.plan.nodes)} nodes ({counts or 'none'}) on {w} worker"
                   f"{'s' if w != 1 else ''}; writing {self.out}")
        self._line(f"estimated {fmt_seconds(self.left())} from scratch (measured per-stage "
                   "costs; cached stages take seconds)")

    def started(self, node) -> None:
        st = node.stage
        self.begun[st] = self.begun.get(st, 0) + 1
        if self.begun[st] == 1:
            self.stage_start[st] = time.time()
            self._line(f"{stage_label(st)}: start ({self.total[st]} node"
                       f"{'s' if self.total[st] != 1 else ''})")

    def finished(self, node, result: dict) -> None:
        st = node.stage
        self.done.add(node.id)
        if "seconds" in result:
            self.measured.setdefault(st, []).append(float(result["seconds"]))
        self.ended[st] = self.ended.get(st, 0) + 1
        if "error" in result and not result.get("upstream"):
            self._line(f"{node.label}: FAILED: {result['error']}")
        if self.ended[st] == self.total[st]:
            took = time.time() - self.stage_start.get(st, self.start)  # Ray: no start events
            failed = " (some failed)" if "error" in result else ""
            self._line(f"{stage_label(st)}: done{failed}, {self.total[st]} node"
                       f"{'s' if self.total[st] != 1 else ''} in {fmt_seconds(took)}; "
                       f"about {fmt_seconds(self.left())} left")
