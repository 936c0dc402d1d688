"""The task graph of a sweep: one node per stage computation, shared between cells.

Each cell (one seed pair) needs, per :mod:`robustpath.stages`:

* ``endpoint`` x 2 (seed a, seed b),
* ``align`` per alignment method (inputs: both endpoints),
* ``curve`` per method x path family (inputs: endpoint a, the alignment),
* ``eval`` per method x path family (input: the curve),
* ``plane`` per method for bezier curves when ``plane_grid`` is set.

A node is named by its stage's own cache key (:mod:`robustpath.stages`: ``endpoint_config``,
``align_key``, ``curve_key``, ``eval_key``, ``plane_spec``), computed from the cell's
settings and its input nodes' keys, so cells that need the same computation get the same
node and it runs once: endpoint ``(dataset, arch, seed 0)`` serves pairs (0, 1) and
(0, 2). An evaluation node also runs the strong stage on its path, so its id adds the
strong stage's settings. Nothing here lists config fields: a setting enters a node id
exactly when it enters the stage's key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import stages
from ..config import BenchConfig
from ..store import config_hash
from .spec import Cell


@dataclass
class Node:
    """One stage computation. ``deps`` are the ids of its input nodes, in the order the
    task receives their results; ``cfg`` is the configuration of the first cell that
    needs it; ``params`` names what it computes (``seed``, ``method``, ``kind``)."""

    id: str
    stage: str
    cfg: BenchConfig
    params: dict[str, Any]
    deps: tuple[str, ...] = ()
    cells: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        p = self.params
        if self.stage == "endpoint":
            return f"endpoint {self.cfg.dataset}/{self.cfg.arch} seed {p['seed']}"
        pair = f"s{p['pair'][0]}-{p['pair'][1]}"
        what = "/".join(str(p[k]) for k in ("method", "kind") if k in p)
        return f"{self.stage} {what} {pair}"


@dataclass
class CellPlan:
    """The nodes one cell needs and how their results become the cell's run folder."""

    cell: Cell
    endpoints: dict[int, str]                  # seed -> endpoint node
    aligns: dict[str, str]                     # method -> align node
    curves: dict[tuple[str, str], str]         # (method, kind) -> curve node
    evals: dict[tuple[str, str], str]          # (method, kind) -> eval node
    planes: dict[str, str]                     # method -> plane node (bezier)

    def nodes(self) -> list[str]:
        return [*self.endpoints.values(), *self.aligns.values(), *self.curves.values(),
                *self.evals.values(), *self.planes.values()]


@dataclass
class Plan:
    """Nodes in dependency order (every node after its inputs) and the cells' plans."""

    nodes: dict[str, Node] = field(default_factory=dict)
    cells: dict[str, CellPlan] = field(default_factory=dict)

    def add(self, stage: str, cfg: BenchConfig, cell: str, spec: dict, params: dict,
            deps: tuple[str, ...] = ()) -> str:
        node_id = f"{stage}-{config_hash({'stage': stage, **spec})}"
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = Node(node_id, stage, cfg, params, deps)
        if cell not in node.cells:
            node.cells.append(cell)
        return node_id

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes.values():
            out[n.stage] = out.get(n.stage, 0) + 1
        return out


def build_plan(cells: list[Cell]) -> Plan:
    """The task graph of ``cells``, with shared computations merged."""
    plan = Plan()
    for cell in cells:
        cfg, name = cell.cfg, cell.name
        sa, sb = cell.pair
        pair = (sa, sb)
        eps = {}
        keys = {}
        for seed in (sa, sb):
            keys[seed] = config_hash(stages.endpoint_config(cfg, seed).cache_key())
            eps[seed] = plan.add("endpoint", cfg, name, {"key": keys[seed]}, {"seed": seed})
        ep_deps = (eps[sa], eps[sb])
        aligns, curves, evals, planes = {}, {}, {}, {}
        strong = ({"strong": stages.strong_spec(cfg), **cfg.strong_settings().__dict__}
                  if cfg.strong else None)
        for method in cfg.align:
            akey = stages.align_key(cfg, method, keys[sa], keys[sb])
            aligns[method] = plan.add("align", cfg, name, {"align": akey},
                                      {"method": method, "pair": pair}, ep_deps)
            for kind in cfg.paths:
                params = {"method": method, "kind": kind, "pair": pair}
                deps = ep_deps + (aligns[method],)
                ckey = stages.curve_key(cfg, kind, keys[sa], akey)
                c = curves[(method, kind)] = plan.add("curve", cfg, name, {"curve": ckey},
                                                      params, deps)
                evals[(method, kind)] = plan.add(
                    "eval", cfg, name, {"eval": stages.eval_key(cfg, ckey), "strong": strong},
                    params, deps + (c,))
                if cfg.plane_grid and kind == "bezier":
                    planes[method] = plan.add(
                        "plane", cfg, name, {"plane": stages.plane_spec(cfg, ckey)}, params,
                        deps + (c,))
        plan.cells[name] = CellPlan(cell, eps, aligns, curves, evals, planes)
    return plan
