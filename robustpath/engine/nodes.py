"""What one node of a plan does: run its stage through the stage functions.

Every executor calls :func:`call_node` (the serial one in-process, the process pool
and Ray in a worker). A node's inputs arrive as its input nodes' results (small
dicts); the models themselves come from the stage cache under ``<run>/ckpt/`` - the
stage functions of :mod:`robustpath.engine.stages` return a stored output instead of
recomputing it, so a node computes the same bytes in any process. On a cluster that
folder must therefore be on a filesystem every node shares; an input missing there is
an error (:class:`MissingInput`) rather than a silent retraining.

Results (one runner per core stage in :data:`RUNNERS`): ``endpoint`` -> ``{"key",
"metrics"}``, ``align`` -> ``{"key", "report"}``, ``curve`` -> ``{"key", "metrics"}``,
``eval`` -> ``{"result": PathResult}``; a path stage's node (strong, curvature, plane:
:mod:`robustpath.engine.path_stages`) -> what its stage's ``run`` returns; every
result also has ``node``, ``stage``, ``seconds``, ``files`` (stage outputs, relative
to the run folder), ``computed`` (an output was written by this task; ``None`` where
the stage writes nothing the task can name), ``host``, ``pid`` and ``threads``
(torch's). A :class:`robustpath.errors.UserError` (bad data, bad checkpoint) is
returned as ``{"error": ...}`` instead of raised, so it is not retried; a node whose
input failed returns ``{"error": ..., "upstream": True}`` without running.

Test-only fault hook: ``ROBUSTPATH_SWEEP_FAULT="STAGE[@CELL]:MARKER"`` (read by the
driver, passed in :class:`Context`) makes the first task of ``STAGE`` (of cell
``CELL`` if given) raise once: it creates the file ``MARKER`` and fails; later
attempts see the file and run. ``MARKER = always`` fails every attempt.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustpath import runtime
from robustpath.config import BenchConfig
from robustpath.device import resolve
from robustpath.engine import keys, path_stages, stages, stages_align
from robustpath.engine.plan import Node
from robustpath.engine.sources import SOURCES
from robustpath.errors import UserError
from robustpath.registry import Registry

FAULT_ENV = "ROBUSTPATH_SWEEP_FAULT"
RUNNERS: Registry[Callable[..., dict]] = Registry("stage")


class MissingInput(RuntimeError):
    """An input node's stage output is not on this machine's filesystem."""


class InjectedFault(RuntimeError):
    """Raised by the test-only fault hook."""


@dataclass
class Context:
    """What every task needs besides its node: the run or sweep folder (absolute; holds
    the stage cache ``ckpt/``), whether stages draw progress bars, the fault hook, and
    torch's thread count for the task (None: as the executor set it)."""

    root: str
    progress: bool = False
    fault: str | None = None
    threads: int | None = None

    @classmethod
    def from_env(cls, root: Path, progress: bool, threads: int | None = None) -> Context:
        return cls(str(Path(root).resolve()), progress, os.environ.get(FAULT_ENV) or None,
                   threads)


_DATA: dict[tuple, stages.RunData] = {}


def run_data(cfg: BenchConfig) -> stages.RunData:
    """The cell's data, loaded once per process (a worker runs many tasks; the last
    two data settings are kept: a full CIFAR training set is 600 MB)."""
    key = (cfg.dataset, cfg.data_root, cfg.train_subset, cfg.test_subset)
    if key not in _DATA:
        while len(_DATA) >= 2:
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = stages.RunData.load(cfg)
    return _DATA[key]


def keep_data(cfg: BenchConfig, data: stages.RunData) -> None:
    """Use ``data`` (already loaded by the caller) for ``cfg``'s nodes in this process."""
    while len(_DATA) >= 2:
        _DATA.pop(next(iter(_DATA)))
    _DATA[(cfg.dataset, cfg.data_root, cfg.train_subset, cfg.test_subset)] = data


def _maybe_fault(node: Node, ctx: Context) -> None:
    if not ctx.fault:
        return
    target, _, marker = ctx.fault.partition(":")
    stage, _, cell = target.partition("@")
    if stage != node.stage or (cell and cell not in node.cells):
        return
    if marker == "always":
        raise InjectedFault(f"injected fault in {node.label} ({FAULT_ENV}, every attempt)")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise InjectedFault(f"injected fault in {node.label} ({FAULT_ENV}, first attempt)")


def _files(root: Path, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob(pattern))


def _check_inputs(root: Path, upstream: tuple[dict, ...]) -> None:
    for up in upstream:
        for f in up.get("files", ()):
            if not (root / f).is_file():
                raise MissingInput(
                    f"input {f} of {up.get('node')} is missing on {socket.gethostname()}: the "
                    f"results folder {root} must be on a filesystem shared by every Ray node")


def call_node(node: Node, ctx: Context, *upstream: dict) -> dict:
    """Run ``node`` given its inputs' results; see the module docstring for the result."""
    for up in upstream:
        if "error" in up:
            return {"node": node.id, "stage": node.stage, "upstream": True,
                    "error": f"input {up['node']} failed"}
    _maybe_fault(node, ctx)
    root = Path(ctx.root)
    start = time.time()
    try:
        _check_inputs(root, upstream)
        cfg = node.cfg
        with runtime.use(runtime.Runtime.of(cfg, progress=ctx.progress, threads=ctx.threads)):
            run = RUNNERS.get(node.stage) if node.stage in RUNNERS else _run_path_stage
            out = run(node, cfg, root, run_data(cfg), resolve(cfg.device), ctx.progress,
                      upstream)
    except UserError as e:
        return {"node": node.id, "stage": node.stage, "error": str(e), "user_error": True}
    files, end = out.setdefault("files", []), time.time()
    # written during this call: a file time in the future (a copied or touched cache) is
    # not "computed now"
    out.setdefault("computed", any(start - 1 <= (root / f).stat().st_mtime <= end + 1
                                   for f in files) if files else None)
    out.update(node=node.id, stage=node.stage, seconds=time.time() - start,
               host=socket.gethostname(), pid=os.getpid(), threads=torch.get_num_threads())
    return out


# ---------------------------------------------------------------- stage runners
# Each runner gets its inputs' models through the stage functions, which return the
# stored outputs of the input nodes (computed before it, by this or another process).
def _endpoint(node: Node, cfg, root, data, device, progress, seed):
    return SOURCES.get(node.params["source"]).load(cfg, seed, root, data, device, progress)


def _aligned(node: Node, cfg, root, data, device, progress):
    sa, sb = node.params["pair"]
    ma, _, ka = _endpoint(node, cfg, root, data, device, progress, sa)
    mb, _, kb = _endpoint(node, cfg, root, data, device, progress, sb)
    aligned, report, akey = stages_align.alignment(cfg, node.params["method"], ma, mb, ka, kb, root,
                                             data, device, progress)
    return ma, ka, aligned, report, akey


def _curve(node: Node, cfg, root, data, device, progress):
    ma, ka, aligned, _, akey = _aligned(node, cfg, root, data, device, progress)
    sa, sb = node.params["pair"]
    return stages.curve(cfg, node.params["kind"], ma, aligned, ka, akey, root, data, device,
                        progress, desc=f"curve {node.params['method']}/{node.params['kind']} "
                        f"s{sa}-{sb}")


def _deferred_curve(node: Node, cfg, root, data, device, progress):
    """The path's curve, loaded on first call only (a cached stage needs no model)."""
    held: dict = {}

    def get():
        if "c" not in held:
            held["c"] = _curve(node, cfg, root, data, device, progress)[0]
        return held["c"]
    return get


def _desc(node: Node, stage: str) -> str:
    sa, sb = node.params["pair"]
    return f"{stage} {node.params['method']}/{node.params['kind']} s{sa}-{sb}"


def _curve_key(node: Node, cfg) -> str:
    src = SOURCES.get(node.params["source"])
    sa, sb = node.params["pair"]
    ka, kb = src.key(cfg, sa), src.key(cfg, sb)
    return keys.curve_key(cfg, node.params["kind"], ka,
                          keys.align_key(cfg, node.params["method"], ka, kb))


@RUNNERS.register("endpoint")
def _run_endpoint(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    src = SOURCES.get(node.params["source"])
    existed = bool(src.files(cfg, node.params["seed"], root))
    _, metrics, key = _endpoint(node, cfg, root, data, device, progress, node.params["seed"])
    return {"key": key, "metrics": metrics, "computed": not existed,
            "files": [str(p.relative_to(root)) for p in src.files(cfg, node.params["seed"], root)]}


@RUNNERS.register("align")
def _run_align(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    _, _, _, report, akey = _aligned(node, cfg, root, data, device, progress)
    return {"key": akey, "report": report, "files": _files(root, f"ckpt/align/*{akey}.json")}


@RUNNERS.register("curve")
def _run_curve(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    _, metrics, ckey = _curve(node, cfg, root, data, device, progress)
    return {"key": ckey, "metrics": metrics,
            "files": _files(root, f"ckpt/curves/*{ckey}/final.json")}


@RUNNERS.register("eval")
def _run_eval(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    curve = _deferred_curve(node, cfg, root, data, device, progress)
    res = stages.path_eval(cfg, curve, _curve_key(node, cfg), root, data, device, progress,
                           desc=_desc(node, "eval"))
    return {"result": res}


def _run_path_stage(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    """A node of a path stage (:mod:`robustpath.engine.path_stages`): its stage's runner."""
    st = path_stages.get(node.stage, node.params.get("module"))
    src = SOURCES.get(node.params["source"])
    sa, sb = node.params["pair"]
    ka, kb = src.key(cfg, sa), src.key(cfg, sb)
    akey = keys.align_key(cfg, node.params["method"], ka, kb)
    res = next((u["result"] for u in inputs if u.get("stage") == "eval"), None)
    part = node.params.get("part", "main")
    return st.run(path_stages.PathInputs(
        part, node.params, cfg, root, data, device, progress,
        _deferred_curve(node, cfg, root, data, device, progress),
        keys.curve_key(cfg, node.params["kind"], ka, akey), (ka, kb), akey, res, inputs,
        _desc(node, st.label if part == "main" else f"{st.label} {part}")))


def describe(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a result (for ``tasks.json``)."""
    keep = ("node", "stage", "seconds", "computed", "host", "pid", "threads", "error",
            "upstream", "key", "files", "attempts")
    return {k: result[k] for k in keep if k in result}
