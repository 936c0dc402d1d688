"""The task graph of a sweep: one node per stage computation, shared between cells.

Each cell (one seed pair) needs, per :mod:`robustpath.stages`:

* ``endpoint`` x 2 (seed a, seed b),
* ``align`` per alignment method (inputs: both endpoints),
* ``curve`` per method x path family (inputs: endpoint a, the alignment),
* ``eval`` per method x path family (input: the curve),
* ``plane`` per method for bezier curves when ``plane_grid`` is set.

A node is named by a hash of what determines its output, so cells that need the same
computation get the same node and it runs once: the endpoint node's hash is the
endpoint stage's own cache key (dataset, arch, seed, training settings), so endpoint
``(dataset, arch, seed 0)`` serves pairs (0, 1) and (0, 2). Alignment and curve nodes
hash the settings their stage reads plus their input nodes; evaluation nodes hash the
whole cell configuration except its seeds, lists and output folder. Sharing can only
be too cautious, never wrong: each node's task calls the stage functions with its own
cell's configuration, whose stage cache would recompute anything that differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import stages
from ..config import BenchConfig
from ..store import config_hash
from .spec import Cell

# settings each training stage reads beyond its input nodes (over-inclusion is safe)
ALIGN_FIELDS = ("dataset", "train_subset", "align_inputs", "norm", "eps", "train_steps",
                "step_size", "batch_size", "pam_iters", "curve_lr", "bends")  # PAM fits curves
CURVE_FIELDS = ("dataset", "train_subset", "bends", "curve_epochs", "batch_size", "curve_lr",
                "augment", "norm", "eps", "train_steps", "step_size")
# fields that never change an evaluation (where / how it runs, other cells' lists)
EVAL_IGNORED = ("out", "device", "data_root", "seeds", "align", "paths", "bootstrap", "preset",
                "plane_grid")


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


def _pick(cfg: BenchConfig, names: tuple[str, ...]) -> dict:
    d = cfg.to_dict()
    return {k: d.get(k) for k in names}


def build_plan(cells: list[Cell]) -> Plan:
    """The task graph of ``cells``, with shared computations merged."""
    plan = Plan()
    for cell in cells:
        cfg, name = cell.cfg, cell.name
        sa, sb = cell.pair
        pair = (sa, sb)
        eps = {}
        for seed in (sa, sb):
            key = config_hash(stages.endpoint_config(cfg, seed).cache_key())
            eps[seed] = plan.add("endpoint", cfg, name, {"key": key}, {"seed": seed})
        ep_deps = (eps[sa], eps[sb])
        aligns, curves, evals, planes = {}, {}, {}, {}
        eval_spec = {k: v for k, v in cfg.to_dict().items() if k not in EVAL_IGNORED}
        for method in cfg.align:
            aligns[method] = plan.add(
                "align", cfg, name, {"method": method, "a": eps[sa], "b": eps[sb],
                                     **_pick(cfg, ALIGN_FIELDS)},
                {"method": method, "pair": pair}, ep_deps)
            for kind in cfg.paths:
                params = {"method": method, "kind": kind, "pair": pair}
                deps = ep_deps + (aligns[method],)
                c = curves[(method, kind)] = plan.add(
                    "curve", cfg, name, {"kind": kind, "align": aligns[method], "a": eps[sa],
                                         **_pick(cfg, CURVE_FIELDS)}, params, deps)
                evals[(method, kind)] = plan.add(
                    "eval", cfg, name, {"curve": c, "cfg": eval_spec}, params, deps + (c,))
                if cfg.plane_grid and kind == "bezier":
                    planes[method] = plan.add(
                        "plane", cfg, name, {"curve": c, "cfg": eval_spec,
                                             "grid": cfg.plane_grid}, params, deps + (c,))
        plan.cells[name] = CellPlan(cell, eps, aligns, curves, evals, planes)
    return plan
