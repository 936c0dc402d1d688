"""The Ray executor: every node of a plan is a Ray task, wired by its inputs.

A node's task gets its input nodes' ObjectRefs as arguments, so Ray starts it when
they are done and each shared node (an endpoint used by several seed pairs) runs
once. Resources per task come from the sweep's ``[resources]`` (``num_gpus`` only when
the cluster has GPUs, else CPUs alone); the task sets torch's thread count to its
CPUs, as the local executor does. Tasks are retried by Ray (``max_retries`` for lost workers and nodes,
``retry_exceptions`` for exceptions); a task that still fails is reported with its
cells and its dependents fail without running, while other cells go on.
``--max-parallel N`` keeps at most N cells submitted at a time (default: all).

``--address``: omitted, a local Ray instance is started for the sweep (or the one
``ray.init`` already started in this process is used); ``auto`` or ``HOST:PORT``
joins a running cluster (``ray start --head`` on one node, ``ray start --address``
on the others). Cluster nodes need robustpath installed and the results folder on a
shared filesystem.
"""

from __future__ import annotations

from robustpath.engine.executors import EXECUTORS
from robustpath.engine.nodes import Context, call_node
from robustpath.engine.plan import Node, Plan
from robustpath.errors import UserError

INSTALL_HINT = ("--executor ray needs Ray, which is not installed: "
                "pip install 'robustpath[ray]' (or: pip install ray)")


def _task(node: Node, ctx: Context, threads: int, *inputs: dict) -> dict:
    """The body of every Ray task (module level, so workers import it by name)."""
    import torch

    torch.set_num_threads(threads)
    return call_node(node, ctx, *inputs)


def _describe(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".strip()
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


@EXECUTORS.register("ray")
class RayExecutor:
    """See the module docstring."""

    stage_progress = False  # workers' bars would interleave in the driver's log

    def __init__(self, *, address: str | None = None, max_parallel: int = 0, workers: int = 1):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError(INSTALL_HINT) from None
        self.address, self.max_parallel = address, max_parallel
        self.started_here = False

    def prepare(self) -> float:
        """Join or start Ray; returns how many tasks can run at once (for the ETA)."""
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = self.address or "a new local instance"
                raise UserError(f"cannot start or join Ray ({where}): {e}") from None
            self.started_here = True
        res = ray.cluster_resources()
        self.gpus = res.get("GPU", 0) > 0
        return res.get("GPU", 0) if self.gpus else res.get("CPU", 1)

    def execute(self, plan: Plan, ctx: Context, tracker, resources) -> None:
        import ray

        remote = ray.remote(_task)
        refs: dict[str, ray.ObjectRef] = {}
        pending: dict[ray.ObjectRef, str] = {}

        def submit(node_id: str) -> None:
            node = plan.nodes[node_id]
            opts = resources.for_stage(node.stage, self.gpus)
            ref = remote.options(**opts, max_retries=resources.retries, retry_exceptions=True,
                                 name=node.label).remote(
                node, ctx, resources.threads(node.stage), *(refs[d] for d in node.deps))
            refs[node_id] = ref
            pending[ref] = node_id

        queue = list(plan.cells)
        submitted: list[str] = []

        def fill() -> None:
            limit = self.max_parallel or len(queue)
            while queue and sum(not tracker.finalized(c) for c in submitted) < limit:
                cell = queue.pop(0)
                submitted.append(cell)
                tracker.cell_started(cell)  # submitted: running as far as we can tell
                for node_id in plan.cells[cell].nodes():
                    if node_id not in refs:
                        submit(node_id)

        try:
            fill()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
                for ref in ready:
                    node_id = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        result = {"error": _describe(e)}
                    tracker.finished(node_id, result)
                if not ready:
                    tracker.tick()
                fill()
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            if self.started_here:
                ray.shutdown()
