"""``summary.json``: a run's results in one machine-readable file a leaderboard can
ingest (schema ``robustpath.summary/1``, documented in ``docs/summary_json.md``).

Written by :func:`robustpath.report.run.build_report` (so by the bench's run-folder
writer :func:`robustpath.io.outputs.write_run` and by ``python -m robustpath.report``),
from the summary table, the run's ``config.json`` and ``provenance.json``. Nothing
time-dependent goes in: a rebuild from the same files gives the same bytes.

Values are stored as in ``tables/summary.csv``: accuracies as fractions in [0, 1]
(``"unit": "fraction"``), losses in nats, positions t in [0, 1]. Each metric carries
its interval and how it was computed (:data:`robustpath.report.metric_registry.INTERVALS`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robustpath.io.records import PathRecord
from robustpath.io.store import atomic_write_json
from robustpath.report import metric_registry

SCHEMA = "robustpath.summary/1"
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}


def _num(v) -> float | None:
    """A JSON number at the CSV's precision (6 decimals), None for NaN."""
    v = float(v)
    return None if not math.isfinite(v) else round(v, 6)


def _metric(row, m: metric_registry.Metric) -> dict:
    pairs = int(row["pairs"])
    entry = {"value": _num(row[m.name]),
             "unit": "fraction" if m.percent else (m.unit or None),
             "better": m.better or None}
    if m.interval == "none":
        entry.update(lo=None, hi=None, std=None, interval_method="none")
    elif pairs > 1:
        entry.update(lo=None, hi=None, std=_num(row[f"{m.name}_std"]),
                     interval_method="std-over-seed-pairs")
    else:
        entry.update(lo=_num(row[f"{m.name}_lo"]), hi=_num(row[f"{m.name}_hi"]), std=None,
                     interval_method=m.interval)
    return entry


def summary_dict(summary: pd.DataFrame, cfg: dict, paths: list[PathRecord],
                 provenance: dict | None, run_name: str) -> dict:
    """The ``summary.json`` object of one run (see ``docs/summary_json.md``)."""
    from robustpath.report.style import format_eps

    endpoints: dict[tuple[str, str], list[list]] = {}
    for p in paths:
        endpoints.setdefault((p.align, p.curve), []).append([p.endpoint_a, p.endpoint_b])
    rows = []
    for _, r in summary.iterrows():
        key = (str(r["align"]), str(r["curve"]))
        rows.append({
            "align": key[0], "curve": key[1], "pairs": int(r["pairs"]),
            "endpoints": endpoints.get(key, []),
            "metrics": {m.name: _metric(r, m) for m in metric_registry.ordered()
                        if m.name in summary.columns},
        })
    eps = cfg.get("eps")
    methods = dict(metric_registry.INTERVALS)
    methods["std-over-seed-pairs"] = ("several seed pairs: value is the mean over seed "
                                      "pairs, std their standard deviation (ddof 1)")
    strong = None
    if cfg.get("strong"):
        strong = {"autoattack_version": cfg.get("aa_version"),
                  "examples": cfg.get("strong_examples"),
                  "pgd_steps": cfg.get("strong_pgd_steps"),
                  "pgd_restarts": cfg.get("strong_pgd_restarts")}
    return {
        "schema": SCHEMA,
        "run": run_name,
        "dataset": cfg.get("dataset"),
        "architecture": cfg.get("arch"),
        "threat_model": THREAT_MODELS.get(str(cfg.get("norm", "")).lower(), cfg.get("norm")),
        "eps": eps,
        "eps_text": format_eps(eps) if eps is not None else None,
        "attack": {"name": cfg.get("attack"), "steps": cfg.get("eval_steps"),
                   "restarts": cfg.get("restarts"), "step_size": cfg.get("step_size")},
        "strong": strong,
        "preset": cfg.get("preset"),
        "test_examples": int(paths[0].result.clean_correct.shape[1]) if paths else None,
        "bootstrap": int(cfg.get("bootstrap", 1000)),
        "code_revision": (provenance or {}).get("git"),
        "interval_methods": methods,
        "rows": rows,
    }


def write(run_dir: str | Path, summary: pd.DataFrame, cfg: dict,
          paths: list[PathRecord], provenance: dict | None) -> Path:
    """Write ``<run_dir>/summary.json`` atomically; returns its path."""
    run_dir = Path(run_dir)
    name = Path(cfg.get("out") or run_dir).name
    out = run_dir / "summary.json"
    atomic_write_json(out, summary_dict(summary, cfg, paths, provenance, name))
    return out
