"""A bench run folder's outputs: what the stages produced (:class:`RunOutputs`), how it is
written atomically (:func:`write_run`, used by the bench and by every sweep cell), and
which config fields make two runs the same configuration (:func:`comparable`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robustpath import runtime
from robustpath.config import PAM_METHODS, BenchConfig
from robustpath.io import runfolder
from robustpath.io.lock import run_lock
from robustpath.io.records import PathRecord
from robustpath.io.records import write as write_records
from robustpath.io.store import atomic_write_json, atomic_write_text, provenance
from robustpath.report.run import build_report


def config_changes(old: dict, new: dict, limit: int = 6) -> str:
    """``"eps: 0.1 -> 8/255, seeds: [0, 1] -> [0, 1, 2, 3]"``: the result-relevant
    settings that differ between two run configs (at most ``limit``, then a count)."""
    from robustpath.report.style import format_eps

    a, b = comparable(old), comparable(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    show = (lambda k, v: format_eps(v) if k in ("eps", "step_size") and v is not None else v)
    parts = [f"{k}: {show(k, a.get(k))} -> {show(k, b.get(k))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"{len(keys) - limit} more")
    return ", ".join(parts)


def comparable(d: dict) -> dict:
    """A run config without the fields that do not change results: where it runs and
    writes, and every :class:`robustpath.runtime.Runtime` setting."""
    out = {k: v for k, v in d.items()
           if k not in ("out", "data_root", *runtime.Runtime.__dataclass_fields__)}
    if not set(out.get("align") or ()) & set(PAM_METHODS):  # pam_iters matters only for PAM
        out.pop("pam_iters", None)
    # protocol options added with --preset paper: at their defaults, runs made before
    # they existed are the same configuration
    for k, default in (("affine_degrees", 0.0), ("schedule", "onecycle"),
                       ("curve_schedule", "cosine"), ("attack_mode", "eval"),
                       ("curvature_examples", 0), ("curvature_iters", 20),
                       ("renorm", "bn-reset"), ("align_samples", 2000),
                       ("bn_endpoints", True), ("strong_t", []), ("strong_at", "ends-worst"),
                       ("endpoints", [])):
        if out.get(k, default) == default:
            out.pop(k, None)
    return out


@dataclass
class RunOutputs:
    """What the stages of one run produced, in memory: the input of :func:`write_run`.

    ``endpoints``: seed -> training metrics; ``alignment``: ``"<method>-s<a>-<b>"`` ->
    alignment report; ``curves``: ``"<method>-<kind>-s<a>-<b>"`` -> curve-fit metrics
    (fitted curves only); ``records``: one :class:`PathRecord` per evaluated path, in
    the order they appear in ``records.csv``; ``stages``: path stage name -> path id ->
    the entry its registration's ``collect`` made (:mod:`robustpath.engine.path_stages`:
    strong, curvature, plane; written by its ``write``).
    """

    endpoints: dict[int, dict] = field(default_factory=dict)
    alignment: dict[str, dict] = field(default_factory=dict)
    curves: dict[str, dict] = field(default_factory=dict)
    records: list[PathRecord] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)


def write_run(run_dir: str | Path, cfg: BenchConfig, out: RunOutputs, *,
              command: str | None = None) -> pd.DataFrame:
    """Write a run folder from a run's outputs; returns the summary frame.

    Writes (each atomically) ``config.json``, ``provenance.json``, ``command.txt``,
    ``endpoints.json``, ``alignment.json``, ``curves.json``, ``records.csv`` +
    ``examples.npz``, ``timings.json``, every path stage's files (its registration's
    ``write``: ``strong_eval.*``, ``curvature.*``, ``plane.npz`` / ``plane.json``), then
    the tables, plots, ``report.{md,html}`` and ``summary.json`` of
    :func:`robustpath.report.run.build_report`. Used by
    :func:`run` and by the sweep executors (one call per cell).

    Atomic (:mod:`robustpath.io.runfolder`): everything goes to ``<run>/.staging/`` first
    and is committed by ``manifest.json``, so a kill leaves the old run or the new
    one, never a mix. Holds the run folder's lock (:func:`robustpath.io.lock.run_lock`).
    """
    final_dir = Path(run_dir)
    with run_lock(final_dir):
        runfolder.recover(final_dir)
        summary, primary = write_staged(runfolder.begin(final_dir), cfg, out, command)
        runfolder.commit(final_dir, primary)
    return summary


def write_staged(run_dir: Path, cfg: BenchConfig, out: RunOutputs,
                 command: str | None) -> tuple[pd.DataFrame, list[str]]:
    """:func:`write_run`'s files into ``run_dir`` (a staging folder of
    :func:`robustpath.io.runfolder.begin`, committed by the caller with the returned
    ``primary`` files; the zoo adds its own files around it). Returns ``(summary,
    primary)``."""
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    atomic_write_json(run_dir / "provenance.json", provenance())
    atomic_write_text(run_dir / "command.txt", (command or "") + "\n")
    atomic_write_json(run_dir / "endpoints.json",
                      {str(s): {k: v for k, v in m.items() if k != "history"}
                       for s, m in out.endpoints.items()})
    atomic_write_json(run_dir / "alignment.json", out.alignment)
    atomic_write_json(run_dir / "curves.json", out.curves)
    write_records(run_dir, out.records)
    if out.timings:  # robustpath.engine.timing.StageTimer.to_dict(): shown in report.html
        atomic_write_json(run_dir / "timings.json", out.timings)
    from robustpath.engine import path_stages

    for st in path_stages.stages():  # strong_eval.*, curvature.*, plane.npz, ...
        if out.stages.get(st.name):
            st.write(run_dir, cfg, out.stages[st.name])
    primary = runfolder.outputs(run_dir)  # the run's sources (hashed in its manifest), not
    return build_report(run_dir), primary  # what report rebuilds from them
