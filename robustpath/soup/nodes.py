"""The soup as engine nodes: its plan (:func:`build_plan`) and the runners of its stages.

A soup run is a plan of the engine (:mod:`robustpath.engine.plan`), executed by its
executors (:func:`robustpath.engine.run.execute`: serial in process, a process pool with
``--workers``; Ray runs the same nodes) with one cached, locked, verified entry per node:

* ``endpoint`` x N - the bench's endpoint nodes, from an endpoint source
  (:data:`robustpath.engine.sources.SOURCES`: ``seed`` trained and cached in
  ``ckpt/endpoints/``, ``file`` the user's checkpoints);
* ``merge`` per method (inputs: the N endpoints) - the N models aligned into one basin
  (:func:`robustpath.soup.merge.merge`), their permutations cached as
  ``ckpt/soup/merge-<key>.npz``;
* ``soup`` per method (inputs: the endpoints, the merge) - the uniform average and the
  N vertices, measured as every point (``soup-<key>.npz``, vertices in the point cache);
* ``triangle`` per method - endpoints 0, 1, 2 on the barycentric grid (``triangle-<key>.npz``);
* ``line`` per method x pair - the line between two endpoints (``line-<key>.npz``).

Keys: :func:`robustpath.engine.keys.merge_spec`, :func:`~robustpath.engine.keys.soup_spec`
(every point: :func:`~robustpath.engine.keys.soup_point_spec`, the per-point cache
``ckpt/soup/points/<key>/``, shared by the nodes of one method, so the triangle's
edges and the pairs' lines are measured once). A node loads its inputs' outputs from
those caches, so it computes the same bytes in any process. Importing this module
registers the runners (:data:`robustpath.engine.nodes.RUNNERS`) and their labels; a
worker process imports it when it unpickles a :class:`SoupNode`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustpath import data as data_mod
from robustpath.attacks.base import build_attack
from robustpath.engine import keys
from robustpath.engine.nodes import RUNNERS
from robustpath.engine.plan import CORE_LABELS, Node, Plan
from robustpath.engine.sources import SOURCES, for_config
from robustpath.io.cache import BoundPointCache, cached_npz
from robustpath.io.store import config_hash
from robustpath.soup.merge import apply_perms, merge, perms_from_arrays, perms_to_arrays
from robustpath.soup.triangle import (
    PointEval,
    SimplexRepair,
    evaluate_mixtures,
    line_weights,
    soup,
    triangle,
)

#: the soup's stages as the run log and timings.json name them
CORE_LABELS.update({"merge": "merge", "soup": "soup", "triangle": "triangle",
                     "line": "soup line"})


@dataclass
class SoupNode(Node):
    """A node of a soup stage; ``params``: ``source``, ``refs`` (the N endpoints),
    ``method``, ``merge`` (its key) and, for a line, ``pair`` (positions in ``refs``)."""

    @property
    def label(self) -> str:
        p = self.params
        pair = f" {p['pair'][0]}-{p['pair'][1]}" if "pair" in p else ""
        return f"{self.stage} {p['method']}{pair}"


@dataclass
class SoupPlan:
    """Where each of a soup run's results is: node ids by method (and pair)."""

    refs: list                                   # the N endpoints (seeds or files)
    endpoints: list[str]
    merges: dict[str, str] = field(default_factory=dict)
    soups: dict[str, str] = field(default_factory=dict)
    triangles: dict[str, str] = field(default_factory=dict)
    lines: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)

    def nodes(self) -> list[str]:
        """Every node of the run (what an executor submits for this cell, e.g. Ray's)."""
        out = [*self.endpoints]
        for m, merge_node in self.merges.items():
            out += [merge_node, self.soups[m], self.triangles[m], *self.lines[m].values()]
        return out


def _add(plan: Plan, stage: str, cfg, cell: str, spec: dict, params: dict, deps) -> str:
    """:meth:`robustpath.engine.plan.Plan.add` for a :class:`SoupNode`."""
    node_id = f"{stage}-{config_hash({'stage': stage, **spec})}"
    node = plan.nodes.setdefault(node_id, SoupNode(node_id, stage, cfg, params, tuple(deps)))
    if cell not in node.cells:
        node.cells.append(cell)
    return node_id


def build_plan(sc, cell: str) -> tuple[Plan, SoupPlan]:
    """The plan of soup run ``sc`` (:class:`robustpath.soup.config.SoupConfig`) named
    ``cell``: nodes in the order a serial run computes them."""
    plan = Plan()
    source = for_config(sc)
    src = SOURCES.get(source)
    refs = src.refs(sc)
    ekeys = [src.key(sc, r) for r in refs]
    eps = [plan.add("endpoint", sc, cell, {"key": k}, {"source": source, "seed": r})
           for r, k in zip(refs, ekeys)]
    sp = SoupPlan(refs, eps)
    for method in sc.methods():
        mkey = config_hash(keys.merge_spec(sc, method, ekeys, sc.merge_seed))
        params = {"source": source, "refs": refs, "method": method, "merge": mkey}
        m = _add(plan, "merge", sc, cell, {"merge": mkey}, params, eps)
        deps = (*eps, m)

        def add(stage, params=params, mkey=mkey, deps=deps, **extra):
            spec = keys.soup_spec(sc, mkey, stage, **extra)
            return _add(plan, stage, sc, cell, {stage: config_hash(spec)}, params, deps)
        sp.merges[method] = m
        sp.soups[method] = add("soup")
        sp.triangles[method] = add("triangle", grid=sc.grid, vertices=[0, 1, 2])
        sp.lines[method] = {(i, j): add("line", {**params, "pair": (i, j)}, pair=[i, j],
                                        grid=sc.grid)
                            for i, j in itertools.combinations(range(len(refs)), 2)}
    plan.cells[cell] = sp  # the run is one cell (the Ray executor submits by cell)
    return plan, sp


# ---------------------------------------------------------------- runners
def _folder(root: Path) -> Path:
    return Path(root) / "ckpt" / "soup"


def _merged(node: Node, cfg, root: Path, data, device, progress: bool):
    """The aligned models and the merge report; the permutations cached as
    ``merge-<key>.npz`` (computed by the merge node, loaded by the others)."""
    from robustpath.align import permutation_spec

    p = node.params
    src = SOURCES.get(p["source"])
    loaded = [src.load(cfg, r, root, data, device, progress) for r in p["refs"]]
    models = [m for m, _, _ in loaded]
    spec = keys.merge_spec(cfg, p["method"], [k for _, _, k in loaded], cfg.merge_seed)
    loader = attack = None
    if "samples" in spec:  # activation matching reads training examples
        n = spec["samples"]
        loader = data_mod.Batches(data.x_train[:n], data.y_train[:n], 250, device=device)
        if spec.get("inputs") == "adv":
            attack = build_attack(keys.merge_attack(cfg), data.num_classes)
    pspec = permutation_spec(models[0], data.x_train[:2].to(device))

    def compute():
        res = merge(models, p["method"], spec=pspec, data=loader, inputs=cfg.align_inputs,
                    attack=attack, seed=cfg.merge_seed)
        return {**perms_to_arrays(res.perms), "report": np.array(json.dumps(res.report()))}

    path = _folder(root) / f"merge-{config_hash(spec)}.npz"
    arrays = cached_npz(path, spec, compute, f"merge {p['method']}")
    return apply_perms(models, perms_from_arrays(pspec, arrays)), \
        json.loads(str(arrays["report"])), path


def _point_eval(cfg, data, device, root: Path, aligned, merge_key: str) -> PointEval:
    """Every network measured as :func:`robustpath.engine.stages.path_eval` measures a
    path point (``--renorm bn-reset``); REPAIR's points depend on the merged models."""
    bn_attack = cfg.train_attack(seed=1)
    bn_data = list(data.train_batches(cfg, seed=0, device=device))[: cfg.bn_batches]
    spec = keys.soup_point_spec(cfg, merge_key)
    renorm = None
    if "renorm" in spec:
        renorm = (lambda m, w: m.eval()) if cfg.renorm == "none" else SimplexRepair(
            cfg.renorm, aligned, bn_data, build_attack(bn_attack, data.num_classes))
    return PointEval(data.x_test, data.y_test, build_attack(cfg.eval_attack(), data.num_classes),
                     bn_data=bn_data, bn_inputs=cfg.bn_inputs,
                     bn_attack=build_attack(bn_attack, data.num_classes), device=device,
                     cache=BoundPointCache(_folder(root) / "points" / config_hash(spec)),
                     renorm=renorm)


def _measured(node: Node, cfg, root: Path, data, device, progress: bool, what: str, compute,
              **extra) -> tuple[dict, str]:
    """``compute(aligned, point)`` cached under the key of soup measurement ``what``; the
    models are loaded only when the entry is not cached yet."""
    p = node.params
    spec = keys.soup_spec(cfg, p["merge"], what, **extra)
    path = _folder(root) / f"{what}-{config_hash(spec)}.npz"

    def run():
        aligned, _, _ = _merged(node, cfg, root, data, device, progress)
        return compute(aligned, _point_eval(cfg, data, device, root, aligned, p["merge"]))

    label = f"{what} {p['method']}" + (f" {p['pair'][0]}-{p['pair'][1]}" if "pair" in p else "")
    return cached_npz(path, spec, run, label), str(path.relative_to(root))


@RUNNERS.register("merge")
def _run_merge(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    _, report, path = _merged(node, cfg, root, data, device, progress)
    return {"key": node.params["merge"], "report": report,
            "files": [str(path.relative_to(root))]}


@RUNNERS.register("soup")
def _run_soup(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    """The uniform soup (cached) and each vertex, measured as every point (point cache)."""
    held: dict = {}

    def compute(aligned, point):
        held.update(aligned=aligned, point=point)
        return soup(aligned, point)

    arrays, file = _measured(node, cfg, root, data, device, progress, "soup", compute)
    if "aligned" not in held:  # the soup was cached: the vertices still need the models
        held["aligned"] = _merged(node, cfg, root, data, device, progress)[0]
        held["point"] = _point_eval(cfg, data, device, root, held["aligned"],
                                    node.params["merge"])
    n = len(node.params["refs"])
    vertices = [evaluate_mixtures(held["aligned"], np.eye(n)[i:i + 1], held["point"],
                                  progress=False) for i in range(n)]
    return {"soup": arrays, "vertices": vertices, "files": [file]}


@RUNNERS.register("triangle")
def _run_triangle(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    desc = f"triangle {node.params['method']}"
    arrays, file = _measured(node, cfg, root, data, device, progress, "triangle",
                             lambda a, p: triangle(a, cfg.grid, p, progress=progress, desc=desc),
                             grid=cfg.grid, vertices=[0, 1, 2])
    return {"triangle": arrays, "files": [file]}


@RUNNERS.register("line")
def _run_line(node: Node, cfg, root: Path, data, device, progress, inputs) -> dict:
    i, j = node.params["pair"]
    n, desc = len(node.params["refs"]), f"line {node.params['method']} {i}-{j}"
    arrays, file = _measured(
        node, cfg, root, data, device, progress, "line",
        lambda a, p: evaluate_mixtures(a, line_weights(n, i, j, cfg.grid), p, progress=progress,
                                       desc=desc), pair=[i, j], grid=cfg.grid)
    return {"line": arrays, "files": [file]}
