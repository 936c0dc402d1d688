"""From a cell's node results to what its run folder holds
(:class:`robustpath.io.outputs.RunOutputs`), in the order the bench always wrote them:
per seed pair, per alignment method, per path family."""

from __future__ import annotations

from robustpath.engine import path_stages
from robustpath.engine.plan import CellPlan, stage_label
from robustpath.engine.sources import SOURCES
from robustpath.io.outputs import RunOutputs
from robustpath.io.records import PathRecord, identity, path_id


def pair_label(a, b) -> str:
    """``s0-1`` for two seeds (as run folders always wrote it), ``A__B`` for named ones."""
    return f"s{a}-{b}" if isinstance(a, int) and isinstance(b, int) else f"{a}__{b}"


def cell_outputs(cp: CellPlan, results: dict[str, dict]) -> RunOutputs:
    """The run folder's contents of cell ``cp`` from its nodes' ``results``; every path
    stage's entry from its registration's ``collect``."""
    records, curves = [], {}
    extra: dict[str, dict] = {}
    ident_of = SOURCES.get(cp.source).ident  # a seed, or a file's stem
    for (method, kind, (ra, rb)), pn in cp.paths.items():
        sa, sb = ident_of(ra), ident_of(rb)
        res = results[pn.eval]["result"]
        records.append(PathRecord(method, kind, sa, sb, res))
        pid, ident = path_id(method, kind, sa, sb), identity(method, kind, sa, sb)
        if results[pn.curve]["metrics"]:
            curves[f"{method}-{kind}-{pair_label(sa, sb)}"] = results[pn.curve]["metrics"]
        ref = path_stages.PathRef(cp.cell.cfg, method, kind, pid, ident, res)
        for name, parts in pn.stages.items():
            st = path_stages.get(name)
            extra.setdefault(name, {})[pid] = st.collect(
                ref, {part: results[n] for part, n in parts.items()})
    return RunOutputs(
        endpoints={ident_of(s): results[n]["metrics"] for s, n in cp.endpoints.items()},
        alignment={f"{m}-{pair_label(ident_of(sa), ident_of(sb))}": results[n]["report"]
                   for (m, (sa, sb)), n in cp.aligns.items()},
        curves=curves, records=records, stages=extra)


def stage_timings(plan, results: dict[str, dict], total: float) -> dict:
    """``timings.json``: seconds and nodes per stage (summed over nodes, so with several
    workers the stages add up to more than the wall time ``total``)."""
    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    for nid, node in plan.nodes.items():
        label = stage_label(node.stage)
        seconds[label] = seconds.get(label, 0.0) + float(results.get(nid, {}).get("seconds", 0))
        calls[label] = calls.get(label, 0) + 1
    return {"stages": [{"stage": k, "calls": calls[k], "seconds": round(v, 3)}
                       for k, v in seconds.items()], "total": round(total, 3)}
