"""Executors run a plan: ``local`` (in this machine's processes) and ``ray``.

An executor is registered by name in :data:`EXECUTORS` and built as
``EXECUTORS.get(name)(address=..., max_parallel=..., workers=...)``; ``prepare()``
starts what it needs and returns how many nodes run at once; ``execute(plan, ctx,
tracker, resources)`` runs every node of ``plan`` and reports each to ``tracker``
(``started`` / ``finished``). All run the same node function,
:func:`robustpath.engine.nodes.call_node`, so every executor computes the same bytes.
A node that raises is retried ``resources.retries`` times; a
:class:`robustpath.errors.UserError` is not retried.

``local`` with ``workers = 1`` runs the nodes one after the other in this process, in
plan order. With ``workers = N > 1`` the nodes whose inputs are done run in a pool of N
worker processes (:class:`concurrent.futures.ProcessPoolExecutor`, ``spawn`` context:
no torch state is forked), each node with ``ctx.threads`` torch threads; ready nodes
start longest remaining chain of work first
(:meth:`robustpath.engine.plan.Plan.critical_order`). Inputs reach a
worker through the stage cache (files, under its entry locks), results come back
pickled. Results do not depend on N: each stage seeds itself and computes with the same
thread count, so a node's output is the same in any process and in any order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from robustpath.engine.nodes import Context, call_node
from robustpath.engine.plan import Plan
from robustpath.errors import UserError
from robustpath.registry import Registry

EXECUTORS: Registry[type] = Registry("executor")


def default_workers() -> int:
    """``$ROBUSTPATH_WORKERS`` if set, else the cores this process may use
    (``os.sched_getaffinity``; ``os.cpu_count`` where the platform lacks it)."""
    if os.environ.get("ROBUSTPATH_WORKERS"):
        try:
            return max(1, int(os.environ["ROBUSTPATH_WORKERS"]))
        except ValueError:
            raise UserError("ROBUSTPATH_WORKERS must be a whole number, got "
                            f"{os.environ['ROBUSTPATH_WORKERS']!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _spawnable_main():
    """While worker processes start: a ``__main__`` whose ``__file__`` is no file on disk
    (``python - <<EOF``, ``python -c``: ``<stdin>``, ``<string>``) is hidden from
    ``multiprocessing``'s spawn, which would re-run it by path in every worker and fail
    there. Workers need nothing from ``__main__``: a node runs robustpath's own functions.
    A script or ``python -m`` main is left as it is (spawn imports it as usual)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or os.path.isfile(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _init_worker(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _attempts(node, ctx: Context, inputs: tuple, retries: int) -> dict:
    """``call_node`` with retries (in a worker or in process); never raises."""
    for attempt in range(1, retries + 2):  # noqa: B007 - the count is returned
        try:
            result = call_node(node, ctx, *inputs)
            break
        except Exception as e:  # noqa: BLE001 - any task failure is retried, as in Ray
            result = {"error": f"{type(e).__name__}: {e}"}
    return {**result, "attempts": attempt}


@EXECUTORS.register("local")
class LocalExecutor:
    """Runs the nodes on this machine: one at a time in process (``workers`` 1), or the
    ready ones in ``workers`` processes. Sweeps (``ctx.threads`` None) give each node
    as many torch threads as a Ray task of its stage would (``[resources] cpus``), so
    both executors give identical records. Stage progress bars are drawn only in
    process (workers' bars would interleave)."""

    def __init__(self, *, address: str | None = None, max_parallel: int = 0,
                 workers: int = 1):
        if address:
            raise UserError("--address needs --executor ray")
        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        self.workers = workers

    @property
    def stage_progress(self) -> bool:
        return self.workers == 1

    def prepare(self) -> float:
        return float(self.workers)

    def execute(self, plan: Plan, ctx: Context, tracker, resources) -> None:
        import torch

        threads = torch.get_num_threads()
        try:
            if self.workers == 1:
                self._serial(plan, ctx, tracker, resources)
            else:
                self._pool(plan, ctx, tracker, resources)
        finally:
            torch.set_num_threads(threads)

    def _serial(self, plan: Plan, ctx: Context, tracker, resources) -> None:
        import torch

        for node in plan.nodes.values():
            if tracker.skip(node.id):
                tracker.finished(node.id, {"error": "not run: its cells failed", "upstream": True})
                continue
            inputs = tuple(tracker.results[d] for d in node.deps)
            torch.set_num_threads(ctx.threads or resources.threads(node.stage))
            tracker.started(node.id)
            if getattr(resources, "raise_errors", False):  # a bench run: the error as raised
                tracker.finished(node.id, call_node(node, ctx, *inputs))
            else:
                tracker.finished(node.id, _attempts(node, ctx, inputs, resources.retries))

    def _pool(self, plan: Plan, ctx: Context, tracker, resources) -> None:
        from robustpath.engine.log import estimates

        # ready nodes start longest remaining chain first (Plan.critical_order)
        todo = {nid: plan.nodes[nid] for nid in plan.critical_order(estimates(plan))}
        running: dict[Future, str] = {}
        mp = multiprocessing.get_context("spawn")
        with _spawnable_main(), ProcessPoolExecutor(
                self.workers, mp_context=mp, initializer=_init_worker,
                initargs=(ctx.threads,)) as pool:
            while todo or running:
                for node_id, node in list(todo.items()):
                    if len(running) >= self.workers:
                        break
                    if not all(d in tracker.results for d in node.deps):
                        continue
                    del todo[node_id]
                    if tracker.skip(node_id):
                        tracker.finished(node_id, {"error": "not run: its cells failed",
                                                   "upstream": True})
                        continue
                    inputs = tuple(tracker.results[d] for d in node.deps)
                    if ctx.threads is None:  # a sweep: the stage's [resources] cpus
                        node_ctx = Context(ctx.root, ctx.progress, ctx.fault,
                                           resources.threads(node.stage))
                    else:
                        node_ctx = ctx
                    tracker.started(node_id)
                    running[pool.submit(_attempts, node, node_ctx, inputs,
                                        resources.retries)] = node_id
                if not running:
                    continue
                done, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    node_id = running.pop(fut)
                    try:
                        result = fut.result()
                    except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                        result = {"error": f"{type(e).__name__}: {e}"}
                    tracker.finished(node_id, result)
                if not done:
                    tracker.tick()
