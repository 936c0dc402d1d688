"""The optional stages that hang off a path (strong, curvature, plane): each is declared
once, in its own module, by one :func:`register` call, and the engine loops over them.

A :class:`PathStage` carries everything the engine needs: its name and the label of
``timings.json`` and the run log, its default cost per node (the run log's estimate),
when it applies to a path (:class:`PathInfo`: configuration, family, pair index), the
nodes it asks for (:class:`Part`: each with its key spec, built from its settings and
its inputs' keys, and its inputs: the path's curve, its evaluation, other parts of the
same stage), the runner of those nodes, how the parts' results become the path's entry
in the cell's :class:`robustpath.io.outputs.RunOutputs` (``collect``) and how
:func:`robustpath.io.outputs.write_run` writes a run's entries (``write``).

:func:`robustpath.engine.plan.build_plan` adds every applicable stage's parts to a path,
:mod:`robustpath.engine.nodes` runs them through the stage's ``run``,
:mod:`robustpath.engine.assemble` collects them and ``write_run`` writes them. A part
whose spec equals another path's is the same node, so a computation shared between
paths (the strong stage's point at t = 0) runs once.

Adding a stage: a module that calls :func:`register`, and its module path in
:data:`MODULES` (so that every process, spawn-pool and Ray workers included, registers
it). A stage registered elsewhere (a test) still reaches workers: a node carries its
stage's module, imported on demand (:func:`get`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robustpath.registry import Registry

#: the modules that register the built-in path stages, in the order their outputs are
#: written (imported by :func:`stages`, in every process that plans or runs a node)
MODULES = ("robustpath.strong.nodes", "robustpath.paths.curvature", "robustpath.paths.plane")

PATH_STAGES: Registry[PathStage] = Registry("path stage")


@dataclass(frozen=True)
class PathInfo:
    """One path as a stage's planning sees it: the cell's configuration, alignment
    ``method``, path family ``kind``, the pair of endpoint refs (seeds or files) and its
    index in the cell's pairs, the endpoint source, and the keys of its endpoints, its
    alignment, its curve and its evaluation (:mod:`robustpath.engine.keys`)."""

    cfg: Any
    method: str
    kind: str
    pair: tuple
    index: int
    source: str
    endpoint_keys: tuple[str, str]
    align_key: str
    curve_key: str
    eval_key: str


@dataclass(frozen=True)
class Part:
    """One node a stage asks for on a path. ``spec``: what the node's id hashes (its
    result-relevant settings and inputs' keys; equal specs are one node, shared by
    paths); ``inputs``: ``"curve"`` (the path's endpoints, alignment and curve),
    ``"eval"`` (its evaluation) and names of parts of the same stage, in the order the
    runner receives their results; ``params``: extra node parameters for the runner."""

    name: str
    spec: dict
    inputs: tuple[str, ...] = ("curve",)
    params: dict = field(default_factory=dict)


@dataclass
class PathInputs:
    """What a stage's runner gets for one node: the part's name and parameters (the
    first path that asked for it), the run folder (its stage cache ``ckpt/``), data,
    device, progress, the path's curve (``curve()``: loaded on first call, so a cached
    node needs no model) and keys, its evaluation (``eval``, a
    :class:`robustpath.paths.evaluate.PathResult`, when the part has it as input), the
    input nodes' results and a progress-bar label."""

    part: str
    params: dict
    cfg: Any
    root: Path
    data: Any
    device: Any
    progress: bool
    curve: Callable[[], Any]
    curve_key: str
    endpoint_keys: tuple[str, str]
    align_key: str
    eval: Any
    inputs: tuple[dict, ...]
    desc: str


@dataclass(frozen=True)
class PathRef:
    """A path as ``collect`` sees it: the cell's configuration, ``method``, ``kind``,
    ``path_id``, its identity columns and its evaluation
    (:class:`robustpath.paths.evaluate.PathResult`)."""

    cfg: Any
    method: str
    kind: str
    path_id: str
    identity: dict
    result: Any


@dataclass(frozen=True)
class PathStage:
    """One optional per-path stage (module docstring).

    ``parts(info) -> [Part]``; ``run(inputs: PathInputs) -> dict`` (the node's result;
    ``files`` lists its outputs relative to the run folder);
    ``collect(ref: PathRef, results: {part: node result})`` -> the path's entry;
    ``write(run_dir, cfg, {path_id: entry})`` writes the run's files. ``applies(info)``:
    whether the path has the stage; ``seconds``: seconds per node of the default quick
    run at one thread, scaled by ``work(cfg)`` relative to that run's for the run log."""

    name: str
    label: str
    seconds: float
    applies: Callable[[PathInfo], bool]
    parts: Callable[[PathInfo], list[Part]]
    run: Callable[[PathInputs], dict]
    collect: Callable[[PathRef, dict[str, dict]], Any]
    write: Callable[[Path, Any, dict[str, Any]], Any]
    work: Callable[[Any], float] = lambda cfg: 1.0
    module: str = ""


def register(stage: PathStage) -> PathStage:
    """Register ``stage`` (its ``module`` defaults to the caller's, so that a worker
    process can import it: :func:`get`)."""
    if not stage.module:
        import sys

        stage = replace(stage, module=sys._getframe(1).f_globals.get("__name__", ""))
    PATH_STAGES.register(stage.name)(stage)
    return stage


def stages() -> list[PathStage]:
    """Every registered path stage, the built-in ones (:data:`MODULES`) first."""
    for m in MODULES:
        importlib.import_module(m)
    return [PATH_STAGES.get(n) for n in PATH_STAGES.registered()]


def get(name: str, module: str | None = None) -> PathStage:
    """The path stage ``name``, importing :data:`MODULES` and then ``module`` (the one
    a node recorded) if it is not registered in this process yet."""
    if name not in PATH_STAGES:
        stages()
    if name not in PATH_STAGES and module:
        importlib.import_module(module)
    return PATH_STAGES.get(name)


def is_path_stage(name: str, module: str | None = None) -> bool:
    try:
        get(name, module)
    except Exception:  # noqa: BLE001 - unknown name or unimportable module: not one
        return False
    return True


def single(spec: Callable[[PathInfo], dict], inputs: tuple[str, ...] = ("curve",)
           ) -> Callable[[PathInfo], list[Part]]:
    """``parts`` of a stage with one node per path, part ``main``."""
    return lambda info: [Part("main", spec(info), inputs)]
