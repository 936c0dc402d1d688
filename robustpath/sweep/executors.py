"""Executors run a sweep's plan: ``local`` (in-process, the reference) and ``ray``.

An executor is registered by name in :data:`EXECUTORS` and built as
``EXECUTORS.get(name)(address=..., max_parallel=...)``; ``prepare()`` starts what it
needs and returns how many tasks run at once; ``execute(plan, ctx, tracker, resources)`` runs every node of ``plan`` and reports each to ``tracker``. Both run the
same task function, :func:`robustpath.sweep.nodes.call_node`, so a Ray sweep
computes what the local one computes. A task that raises is retried
``resources.retries`` times; a :class:`robustpath.errors.UserError` is not retried.
"""

from __future__ import annotations

from ..errors import UserError
from ..registry import Registry
from .nodes import Context, call_node
from .plan import Plan
from .spec import Resources
from .tracker import Tracker

EXECUTORS: Registry[type] = Registry("executor")


@EXECUTORS.register("local")
class LocalExecutor:
    """Runs the nodes in-process, one stage at a time, in plan order (every node after
    its inputs); no Ray needed. ``--max-parallel`` does not apply (one at a time).
    Each task runs with as many torch threads as a Ray task of its stage would
    (``[resources] cpus``), so both executors give identical records. Stage progress
    bars are shown, as in ``robustpath.bench``."""

    stage_progress = True

    def __init__(self, *, address: str | None = None, max_parallel: int = 0):
        if address:
            raise UserError("--address needs --executor ray")

    def prepare(self) -> float:
        """Nothing to start; one task at a time."""
        return 1.0

    def execute(self, plan: Plan, ctx: Context, tracker: Tracker, resources: Resources) -> None:
        import torch

        threads = torch.get_num_threads()
        try:
            self._run(plan, ctx, tracker, resources)
        finally:
            torch.set_num_threads(threads)

    def _run(self, plan: Plan, ctx: Context, tracker: Tracker, resources: Resources) -> None:
        import torch

        for node in plan.nodes.values():
            if tracker.skip(node.id):
                tracker.finished(node.id, {"error": "not run: its cells failed", "upstream": True})
                continue
            inputs = tuple(tracker.results[d] for d in node.deps)
            torch.set_num_threads(resources.threads(node.stage))
            tracker.started(node.id)
            for attempt in range(1, resources.retries + 2):
                try:
                    result = call_node(node, ctx, *inputs)
                    break
                except Exception as e:  # noqa: BLE001 - any task failure is retried, as in Ray
                    result = {"error": f"{type(e).__name__}: {e}"}
                    if attempt <= resources.retries:
                        tracker.note(f"retrying {node.label} (attempt {attempt + 1}) after "
                                     f"{type(e).__name__}: {e}")
            tracker.finished(node.id, {**result, "attempts": attempt})


def executor_names() -> list[str]:
    from . import ray_executor  # noqa: F401 - registers "ray" (imports ray only when used)

    return EXECUTORS.names()
