"""The plan of a run: one node per stage computation, shared between cells.

A *cell* is one benchmark configuration (:class:`~robustpath.config.BenchConfig`) and
a name: ``robustpath.bench`` plans one cell with all its seed pairs, a sweep one cell
per grid point (one seed pair each). Per seed pair ``(a, b)`` of a cell the plan holds

* ``endpoint`` x 2, from an endpoint source (:mod:`robustpath.engine.sources`),
* ``align`` per alignment method (inputs: both endpoints),
* ``curve`` per method x path family (inputs: endpoint a, the alignment),
* ``eval`` per curve (input: the curve),
* the nodes of every path stage that applies to the path
  (:mod:`robustpath.engine.path_stages`: ``strong`` unless ``--no-strong``,
  ``curvature`` with ``--curvature N``, ``plane`` for the bezier curve of the cell's
  first pair with ``plane_grid``), keyed by their stage's parts.

A node is named by its stage's own cache key (:mod:`robustpath.engine.keys`), computed from the
cell's settings and its input nodes' keys, so cells that need the same computation get
the same node and it runs once: endpoint ``(dataset, arch, seed 0)`` serves pairs (0, 1)
and (0, 2). Nothing here lists config fields: a setting enters a node id exactly when
it enters the stage's key. Nodes are kept in dependency order (every node after its
inputs), which is also the order of the serial run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robustpath.config import BenchConfig
from robustpath.engine import keys, path_stages
from robustpath.engine.sources import SOURCES, for_config
from robustpath.io.store import config_hash

# what each core stage is called in timings.json and the run log (the names bench always
# used); a path stage's label is its registration's (robustpath.engine.path_stages)
CORE_LABELS = {"endpoint": "endpoint", "align": "alignment", "curve": "curve",
               "eval": "path eval"}


def stage_label(stage: str) -> str:
    """The label of ``stage`` in ``timings.json`` and the run log."""
    if stage in CORE_LABELS or not path_stages.is_path_stage(stage):
        return CORE_LABELS.get(stage, stage)
    return path_stages.get(stage).label


@dataclass
class Node:
    """One stage computation. ``deps`` are the ids of its input nodes, in the order the
    runner receives their results; ``cfg`` is the configuration of the first cell that
    needs it; ``params`` names what it computes (``source``, ``seed``, ``method``,
    ``kind``, ``pair``)."""

    id: str
    stage: str
    cfg: BenchConfig
    params: dict[str, Any]
    deps: tuple[str, ...] = ()
    cells: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        p = self.params
        ident = SOURCES.get(p.get("source", "seed")).ident  # a seed, or a file's stem
        if self.stage == "endpoint":
            what = p.get("source", "seed")  # seed, file, zoo
            return f"endpoint {self.cfg.dataset}/{self.cfg.arch} {what} {ident(p['seed'])}"
        a, b = (ident(r) for r in p["pair"])
        pair = f"s{a}-{b}" if isinstance(a, int) and isinstance(b, int) else f"{a}__{b}"
        what = "/".join(str(p[k]) for k in ("method", "kind") if k in p)
        part = f" {p['part']}" if p.get("part", "main") != "main" else ""
        return f"{self.stage}{part} {what} {pair}"


@dataclass
class PathNodes:
    """The nodes of one path (method x family x pair): its curve, its evaluation and,
    per path stage that applies, its parts' nodes (stage -> part -> node id)."""

    curve: str
    eval: str
    stages: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class CellPlan:
    """The nodes one cell needs and how their results become the cell's run folder."""

    cell: Any                                   # has .name and .cfg (a sweep Cell, a bench run)
    endpoints: dict[int, str]                   # seed -> endpoint node
    aligns: dict[tuple[str, tuple], str]        # (method, pair) -> align node
    paths: dict[tuple[str, str, tuple], PathNodes]  # (method, kind, pair) -> its nodes
    source: str = "seed"                        # where its endpoints come from (sources)

    def nodes(self) -> list[str]:
        out = [*self.endpoints.values(), *self.aligns.values()]
        for p in self.paths.values():
            out += [p.curve, p.eval]
            out += [n for parts in p.stages.values() for n in parts.values() if n not in out]
        return out


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

    def critical_order(self, seconds: dict[str, float]) -> list[str]:
        """Node ids by decreasing *bottom level* (a node's estimated ``seconds`` plus the
        longest chain of estimated seconds after it), ties in plan order: the priority
        of critical-path list scheduling (Hu 1961; HLFET, Adam, Chandy and Dickson 1974).
        A pool that starts its ready nodes in this order starts the long chains (an
        endpoint's curves, their evaluations and strong points) before the short
        branches (plane rows, transfer sources) that can fill the workers at the end.
        For the default run on 2 workers, a simulation with its measured node costs
        gives 875 s against 903 s in plan order (the lower bound, node-seconds / 2, is
        875 s). The order changes no result: every node computes the same bytes in any
        order."""
        after: dict[str, list[str]] = {nid: [] for nid in self.nodes}
        for node in self.nodes.values():
            for dep in node.deps:
                after[dep].append(node.id)
        level: dict[str, float] = {}
        for nid in reversed(list(self.nodes)):  # plan order is a topological order
            level[nid] = seconds.get(nid, 0.0) + max((level[s] for s in after[nid]), default=0.0)
        index = {nid: i for i, nid in enumerate(self.nodes)}
        return sorted(self.nodes, key=lambda nid: (-level[nid], index[nid]))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes.values():
            out[n.stage] = out.get(n.stage, 0) + 1
        return out


def build_plan(cells: list, source: str | None = None) -> Plan:
    """The plan of ``cells`` (objects with ``name`` and ``cfg``), shared computations
    merged; endpoints come from ``source`` (:data:`robustpath.engine.sources.SOURCES`;
    default: the configuration's, :func:`robustpath.engine.sources.for_config`)."""
    plan = Plan()
    for cell in cells:
        cfg, name = cell.cfg, cell.name
        source = source or for_config(cfg)
        src = SOURCES.get(source)
        eps: dict[int, str] = {}
        ekeys: dict[int, str] = {}
        for seed in src.refs(cfg):
            ekeys[seed] = src.key(cfg, seed)
            eps[seed] = plan.add("endpoint", cfg, name, {"key": ekeys[seed]},
                                 {"source": source, "seed": seed})
        aligns: dict = {}
        paths: dict = {}
        extra = path_stages.stages()
        for i, (sa, sb) in enumerate(src.pairs(cfg)):
            pair = (sa, sb)
            ep_deps = (eps[sa], eps[sb])
            for method in cfg.align:
                akey = keys.align_key(cfg, method, ekeys[sa], ekeys[sb])
                base = {"source": source, "method": method, "pair": pair}
                aligns[(method, pair)] = a = plan.add("align", cfg, name, {"align": akey}, base,
                                                      ep_deps)
                for kind in cfg.paths:
                    params = {**base, "kind": kind}
                    ckey = keys.curve_key(cfg, kind, ekeys[sa], akey)
                    c = plan.add("curve", cfg, name, {"curve": ckey}, params, ep_deps + (a,))
                    up = ep_deps + (a, c)
                    ekey = keys.eval_key(cfg, ckey)
                    pn = PathNodes(c, plan.add("eval", cfg, name, {"eval": ekey}, params, up))
                    info = path_stages.PathInfo(cfg, method, kind, pair, i, source,
                                                (ekeys[sa], ekeys[sb]), akey, ckey, ekey)
                    for st in extra:
                        if not st.applies(info):
                            continue
                        ids: dict[str, str] = {}
                        for part in st.parts(info):
                            deps = tuple(d for x in part.inputs for d in (
                                up if x == "curve" else (pn.eval,) if x == "eval" else (ids[x],)))
                            ids[part.name] = plan.add(
                                st.name, cfg, name, part.spec,
                                {**params, **part.params, "part": part.name,
                                 "module": st.module}, deps)
                        pn.stages[st.name] = ids
                    paths[(method, kind, pair)] = pn
        plan.cells[name] = CellPlan(cell, eps, aligns, paths, source)
    return plan
