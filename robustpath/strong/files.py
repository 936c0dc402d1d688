"""Outputs of the strong stage (:mod:`robustpath.strong.stage`) and its table metrics.

Files in a run folder:

* ``strong_eval.csv`` / ``strong_eval.md`` - one row per path x attacked point
  (``role`` a | b | worst | extra, ``t``): ``clean_acc``, ``robust_acc_pgd`` (the
  evaluation attack), ``robust_acc_aa`` (AutoAttack, version in ``aa_version``),
  ``robust_acc_pgd_many`` (PGD-50 x 10 by default), ``robust_acc_worst`` (robust to
  all three), ``gap_pgd_aa`` = PGD - AA, the transfer accuracies and one-sided McNemar
  p-values per source, ``masking`` (a source beat the direct attack beyond sampling
  error), AutoAttack's gradient passes per example and its check warnings.
* ``strong_examples.npz`` - per-example bool arrays ``<path_id>/<role>/<name>`` and the
  subset's indices ``<path_id>/indices``: the source of the CIs.
* ``cards/<path_id>-<role>.json`` - RobustBench-style model cards (dataset, threat
  model, eps, clean / AutoAttack / PGD accuracy, number of examples, attack versions,
  t, path family, alignment, endpoints, code revision).

:func:`strong_metrics` gives the summary-table columns with exact or bootstrap 95%
intervals over the subset's examples: ``aa_robust_worst`` (AA accuracy at PGD's worst
t), ``aa_acc_barrier`` ((1 - t*) AA(0) + t* AA(1) - AA(t*): at PGD's worst t, a lower
bound on the AA barrier over the path) and ``aa_pgd_gap`` (PGD(t*) - AA(t*)); with
``--strong-at grid`` also their counterparts over every attacked t
(:data:`STRONG_PATH_METRICS`).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from robustpath.errors import UserError
from robustpath.io.store import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    git_revision,
)
from robustpath.stats.barrier import ci_note
from robustpath.stats.exact import accuracy_interval, discordant, paired_difference
from robustpath.strong.stage import StrongPath, StrongPoint

STRONG_METRICS = ("aa_robust_worst", "aa_acc_barrier", "aa_pgd_gap")
#: with --strong-at grid, over every attacked t as well
STRONG_PATH_METRICS = ("aa_robust_min", "aa_acc_barrier_max", "aa_pgd_gap_max")
NAMES = ("clean", "pgd", "aa", "pgd_many", "transfer_a", "transfer_b")


#: accuracy columns of ``strong_eval`` with a Clopper-Pearson interval (``_lo``, ``_hi``)
ACC_COLUMNS = ("clean_acc", "robust_acc_pgd", "robust_acc_aa", "robust_acc_pgd_many",
               "robust_acc_worst")


def exact_columns(a: dict[str, np.ndarray]) -> dict[str, float | int]:
    """The exact-interval and discordant-count columns of one point from its per-example
    bool arrays ``a`` (``clean``, ``pgd``, ``aa``, ``pgd_many``, ``transfer_a/b``)."""
    a = {k: np.asarray(v, dtype=bool) for k, v in a.items()}
    worst = a["pgd"] & a["aa"] & a["pgd_many"]
    out: dict[str, float | int] = {}
    for col, arr in zip(ACC_COLUMNS, (a["clean"], a["pgd"], a["aa"], a["pgd_many"], worst)):
        out[f"{col}_lo"], out[f"{col}_hi"] = accuracy_interval(arr)
    out["gap_pgd_aa_lo"], out["gap_pgd_aa_hi"] = paired_difference(a["pgd"], a["aa"])
    out["gap_b"], out["gap_c"] = discordant(a["pgd"], a["aa"])
    for s_ in ("a", "b"):
        out[f"transfer_b_{s_}"], out[f"transfer_c_{s_}"] = discordant(a["pgd"],
                                                                       a[f"transfer_{s_}"])
    return out


def frame(paths: dict[str, tuple[dict, StrongPath]]) -> pd.DataFrame:
    """``paths``: path_id -> (identity columns, StrongPath); one row per point.

    Every accuracy has its exact 95% interval (Clopper-Pearson, ``<col>_lo`` /
    ``<col>_hi``); ``gap_pgd_aa`` its exact paired one
    (:func:`robustpath.stats.exact.paired_difference`) and its discordant counts
    ``gap_b`` (PGD-robust, AA-broken) / ``gap_c`` (the reverse); every transfer test its
    McNemar counts ``transfer_b_<s>`` (robust to the direct attack, broken by the
    transfer) / ``transfer_c_<s>`` (the reverse) beside its p-value."""
    rows = []
    for pid, (ident, sp) in paths.items():
        for p in sp.points:
            a = p.arrays
            worst = a["pgd"] & a["aa"] & a["pgd_many"]
            row = {"path_id": pid, **ident, "role": p.role, "t": p.t, "n": len(sp.indices),
                   "clean_acc": p.acc("clean"), "robust_acc_pgd": p.acc("pgd"),
                   "robust_acc_aa": p.acc("aa"), "robust_acc_pgd_many": p.acc("pgd_many"),
                   "robust_acc_worst": float(worst.mean()),
                   "gap_pgd_aa": p.acc("pgd") - p.acc("aa"),
                   "transfer_acc_a": p.acc("transfer_a"), "transfer_acc_b": p.acc("transfer_b"),
                   "transfer_p_a": p.meta["transfer_p_a"], "transfer_p_b": p.meta["transfer_p_b"],
                   **exact_columns(a)}
            row.update({"masking": bool(p.meta["transfer_flag_a"] or p.meta["transfer_flag_b"]),
                        "aa_version": p.meta["aa"]["version"],
                        "aa_engine": p.meta["aa"].get("engine", ""),
                        "aa_grad_passes": p.meta["aa_grad_passes"],
                        "clean_matches_path": p.meta["clean_matches_path"],
                        "aa_warnings": " | ".join(p.meta["aa_warnings"])})
            rows.append(row)
    return pd.DataFrame(rows)


def _md(f: pd.DataFrame, note: str) -> str:
    cols = ["path_id", "role", "t", "n", "clean_acc", "robust_acc_pgd", "robust_acc_aa",
            "robust_acc_pgd_many", "robust_acc_worst", "gap_pgd_aa", "transfer_acc_a",
            "transfer_acc_b", "masking", "aa_grad_passes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in f.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c == "t":
                cells.append(f"{v:.4f}")
            elif c in ("n",):
                cells.append(str(int(v)))
            elif c == "masking":
                cells.append("FLAG" if v else "")
            elif c == "aa_grad_passes":
                cells.append(f"{v:.0f}")
            elif c.startswith("transfer_acc_"):   # with McNemar's discordant counts (b/c)
                s_ = c[-1]
                cells.append(f"{100 * v:.1f} ({int(r[f'transfer_b_{s_}'])}/"
                             f"{int(r[f'transfer_c_{s_}'])})")
            elif f"{c}_lo" in r.index:             # exact 95% interval
                cells.append(f"{100 * v:.1f} [{100 * r[f'{c}_lo']:.1f}, {100 * r[f'{c}_hi']:.1f}]"
                             + (f" ({int(r['gap_b'])}/{int(r['gap_c'])})" if c == "gap_pgd_aa"
                                else ""))
            elif isinstance(v, (float, np.floating)):
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    warn = [f"- {r['path_id']} {r['role']}: {r['aa_warnings']}" for _, r in f.iterrows()
            if r["aa_warnings"]]
    mism = [f"- {r['path_id']} {r['role']}" for _, r in f.iterrows() if not r["clean_matches_path"]]
    out = note + "\n\n" + "\n".join(lines) + "\n"
    out += "\nAutoAttack's own checks: " + ("\n" + "\n".join(warn) if warn else "no warnings.") + "\n"
    if mism:
        out += ("\nWARNING: clean correctness at these points differs from the path evaluation "
                "(the point was not prepared identically):\n" + "\n".join(mism) + "\n")
    return out


def write(run_dir: str | Path, paths: dict[str, tuple[dict, StrongPath]], *, cfg: dict,
          provenance: dict | None = None) -> pd.DataFrame:
    """Write ``strong_eval.{csv,md}``, ``strong_examples.npz`` and ``cards/``."""
    run_dir = Path(run_dir)
    f = frame(paths)
    arrays = {}
    for pid, (_, sp) in paths.items():
        arrays[f"{pid}/indices"] = sp.indices.astype(np.int64)
        for p in sp.points:
            arrays[f"{pid}/{p.role}/t"] = np.asarray([p.t])
            for k in NAMES:
                arrays[f"{pid}/{p.role}/{k}"] = np.asarray(p.arrays[k], dtype=np.bool_)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(run_dir / "strong_examples.npz", buf.getvalue())
    atomic_write_text(run_dir / "strong_eval.csv", f.to_csv(index=False, float_format="%.6f"))
    any_sp = next(iter(paths.values()))[1] if paths else None
    note = _note(len(any_sp.indices) if any_sp else 0, cfg, any_sp.settings if any_sp else {})
    atomic_write_text(run_dir / "strong_eval.md", _md(f, note))
    rev = (provenance or {}).get("git_revision") or git_revision()
    for pid, (ident, sp) in paths.items():
        for p in sp.points:
            atomic_write_json(run_dir / "cards" / f"{pid}-{p.role}.json",
                              card(cfg, ident, sp, p, rev))
    return f


def _note(n: int, cfg: dict, s: dict) -> str:
    """The heading and legend of ``strong_eval.md``; ``s``: the strong settings."""
    return (f"# Strong evaluation\n\nAccuracies in percent on {n} "
            f"test examples (a seeded subset, the same at every point). robust_acc_pgd: the "
            f"evaluation attack ({cfg.get('attack', 'pgd')}, {cfg.get('eval_steps', '?')} steps); "
            f"robust_acc_aa: AutoAttack {s.get('aa_version', 'standard')} (Croce & Hein's code, "
            f"pyautoattack); robust_acc_pgd_many: PGD-{s.get('pgd_steps')} x "
            f"{s.get('pgd_restarts')} restarts; robust_acc_worst: robust to all three; "
            "gap_pgd_aa = robust_acc_pgd - robust_acc_aa. [lo, hi]: exact 95% intervals: "
            "Clopper-Pearson for an accuracy; for the gap, Clopper-Pearson on each discordant "
            "count combined by Bonferroni (robustpath.stats.exact), with the discordant counts "
            "(PGD-robust & AA-broken / the reverse). transfer_acc_a/b: accuracy on the "
            "evaluation attack's examples made against endpoint A / B, with McNemar's "
            "discordant counts (b = robust to the direct attack but broken by the transfer / "
            "c = the reverse); masking = FLAG where one beats the direct attack beyond "
            "sampling error (one-sided exact McNemar on b of b + c, Bonferroni over the "
            "path's tests, level 0.05: with few examples it needs many discordant ones, e.g. "
            "7 of 7 at 16 examples and 3 points). aa_grad_passes: AutoAttack's gradient passes "
            "per example. role worst: the path's lowest PGD robust accuracy over grid and "
            "refinement; roles grid<i>: every grid t (--strong-at grid).")


def refresh(run_dir: str | Path, cfg: dict) -> pd.DataFrame | None:
    """``tables/strong_eval.{csv,md}``: the run's ``strong_eval.csv`` with the current
    exact-interval and discordant-count columns computed from ``strong_examples.npz``
    (``python -m robustpath.report`` writes it, so runs made before those columns get
    them; the bench's own ``strong_eval.*`` are primary files of the run and stay as
    written). None without a strong stage. Nothing is attacked again."""
    run_dir = Path(run_dir)
    path = run_dir / "strong_eval.csv"
    arrays = read(run_dir)
    if arrays is None or not path.is_file():
        return None
    try:
        f = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{path} is not a strong-evaluation table ({e})") from None
    extra = []
    for r in f.itertuples():
        d = arrays.get(str(r.path_id), {})
        try:
            extra.append(exact_columns({k: d[f"{r.role}/{k}"] for k in NAMES}))
        except KeyError:
            raise UserError(f"{run_dir / 'strong_examples.npz'} lacks the arrays of "
                            f"{r.path_id} / {r.role} named in {path}") from None
    new = pd.DataFrame(extra, index=f.index)
    f = pd.concat([f.drop(columns=[c for c in new.columns if c in f.columns]), new], axis=1)
    f["aa_warnings"] = f["aa_warnings"].fillna("").astype(str)
    s = {"aa_version": cfg.get("aa_version", "standard"),
         "pgd_steps": cfg.get("strong_pgd_steps", 50),
         "pgd_restarts": cfg.get("strong_pgd_restarts", 10)}
    atomic_write_text(run_dir / "tables" / "strong_eval.csv", f.to_csv(index=False,
                                                                      float_format="%.6f"))
    atomic_write_text(run_dir / "tables" / "strong_eval.md",
                      _md(f, _note(int(f["n"].iloc[0]) if len(f) else 0, cfg, s)))
    return f


def card(cfg: dict, ident: dict, sp: StrongPath, p: StrongPoint, revision: str | None) -> dict:
    """A RobustBench-style model card of one attacked point."""
    eps = float(cfg.get("eps", float("nan")))
    return {
        "dataset": cfg.get("dataset"), "threat_model": {"linf": "Linf", "l2": "L2"}.get(
            str(cfg.get("norm", "linf")), cfg.get("norm")),
        "eps": eps, "eps_fraction": _fraction(eps),
        "clean_acc": round(100 * p.acc("clean"), 2),
        "autoattack_acc": round(100 * p.acc("aa"), 2),
        "pgd_acc": round(100 * p.acc("pgd"), 2),
        "pgd_many_acc": round(100 * p.acc("pgd_many"), 2),
        "n_examples": int(len(sp.indices)),
        "attacks": {"autoattack": p.meta.get("aa"), "pgd": {
            "name": cfg.get("attack"), "steps": cfg.get("eval_steps"),
            "restarts": cfg.get("restarts"), "step_size": cfg.get("step_size")},
            "pgd_many": p.meta.get("pgd_many")},
        "autoattack_after": p.meta.get("aa_after"),
        "autoattack_warnings": p.meta.get("aa_warnings"),
        "autoattack_grad_passes_per_example": p.meta.get("aa_grad_passes"),
        "t": p.t, "role": p.role, **ident,
        "architecture": cfg.get("arch"), "code_revision": revision,
    }


def _fraction(eps: float) -> str | None:
    """RobustBench's way of writing eps (``8/255``), else the smallest power-of-ten
    denominator (0.1 -> ``1/10``); None when eps is neither."""
    for d in (255, 10, 100, 1000):
        k = eps * d
        if abs(k - round(k)) < 1e-6 and round(k) > 0:
            return f"{int(round(k))}/{d}"
    return None


def read(run_dir: str | Path) -> dict[str, dict[str, np.ndarray]] | None:
    """Per-example arrays by path id (``{"indices", "<role>/t", "<role>/<name>"}``), or
    None when the run has no strong stage."""
    path = Path(run_dir) / "strong_examples.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path} is corrupt or truncated ({type(e).__name__})") from None
    out: dict[str, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        pid, _, rest = k.partition("/")
        out.setdefault(pid, {})[rest] = v
    return out


def _points(d: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """``[(role, t)]`` of every attacked point of one path, sorted by t."""
    roles = {k.split("/")[0] for k in d if k.endswith("/aa")}
    return sorted(((r, float(d[f"{r}/t"][0])) for r in roles if f"{r}/t" in d),
                  key=lambda rt: (rt[1], rt[0]))


def strong_metrics(d: dict[str, np.ndarray], *, bootstrap: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict[str, dict[str, float]]:
    """Point estimates and 95% intervals of :data:`STRONG_METRICS` for one path.

    At PGD's worst t (role ``worst``): ``aa_robust_worst`` (Clopper-Pearson),
    ``aa_pgd_gap`` (exact paired, :func:`robustpath.stats.exact.paired_difference`) and
    ``aa_acc_barrier`` = (1 - t*) AA(0) + t* AA(1) - AA(t*), a lower bound on the AA
    barrier over the path (bootstrap over examples; none below 30 examples or
    resamples, :func:`robustpath.stats.barrier.ci_note`). With every grid t attacked
    (``--strong-at grid``, roles ``grid<i>``) also, over every attacked t:
    ``aa_robust_min`` (at ``aa_t_min``; its Clopper-Pearson interval is conditional on
    that t), ``aa_acc_barrier_max`` (bootstrap of the maximum) and ``aa_pgd_gap_max``
    (at ``aa_t_gap_max``; exact paired interval there)."""
    need = [f"{r}/{k}" for r in ("a", "b", "worst") for k in ("aa", "pgd")] + ["worst/t"]
    if any(k not in d for k in need):
        return {}
    n = len(d["a/aa"])
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64) / n
    no_ci = ci_note(n, bootstrap) is not None
    alpha = (1 - level) / 2

    a0, a1 = d["a/aa"].astype(np.float64), d["b/aa"].astype(np.float64)

    def barrier(ts: np.ndarray, aa: np.ndarray, boot: bool) -> np.ndarray:
        """(1 - t) AA(0) + t AA(1) - AA(t): ``aa`` [P] (point) or [B, P] (replicates)."""
        if boot:
            return (1 - ts) * (w @ a0)[:, None] + ts * (w @ a1)[:, None] - aa
        return (1 - ts) * a0.mean() + ts * a1.mean() - aa

    def boot_ci(values: np.ndarray) -> tuple[float, float]:
        if no_ci:
            return float("nan"), float("nan")
        lo, hi = np.quantile(values, [alpha, 1 - alpha])
        return float(lo), float(hi)

    t = float(d["worst/t"][0])
    aw, pw = d["worst/aa"], d["worst/pgd"]
    out = {}
    lo, hi = accuracy_interval(aw, level)
    out["aa_robust_worst"] = {"value": float(np.mean(aw)), "lo": lo, "hi": hi}
    tt = np.array([t])
    b_lo, b_hi = boot_ci(barrier(tt, (w @ aw.astype(np.float64))[:, None], True)[:, 0])
    out["aa_acc_barrier"] = {"value": float(barrier(tt, np.array([np.mean(aw)]), False)[0]),
                             "lo": b_lo, "hi": b_hi}
    lo, hi = paired_difference(pw, aw, level)
    out["aa_pgd_gap"] = {"value": float(np.mean(pw) - np.mean(aw)), "lo": lo, "hi": hi}
    out["aa_t_worst"] = {"value": t, "lo": t, "hi": t}
    pts = _points(d)
    if not any(r.startswith("grid") for r, _ in pts):
        return out
    ts = np.array([tt for _, tt in pts])
    aa = np.stack([d[f"{r}/aa"] for r, _ in pts]).astype(np.float64)      # [P, N]
    pgd = np.stack([d[f"{r}/pgd"] for r, _ in pts]).astype(np.float64)
    i = int(np.argmin(aa.mean(1)))                                       # first lowest
    lo, hi = accuracy_interval(aa[i], level)
    out["aa_robust_min"] = {"value": float(aa[i].mean()), "lo": lo, "hi": hi}
    out["aa_t_min"] = {"value": float(ts[i]), "lo": float(ts[i]), "hi": float(ts[i])}
    b_lo, b_hi = boot_ci(barrier(ts, w @ aa.T, True).max(-1))
    out["aa_acc_barrier_max"] = {"value": float(barrier(ts, aa.mean(1), False).max()), "lo": b_lo,
                                 "hi": b_hi}
    g = int(np.argmax(pgd.mean(1) - aa.mean(1)))
    lo, hi = paired_difference(pgd[g].astype(bool), aa[g].astype(bool), level)
    out["aa_pgd_gap_max"] = {"value": float(pgd[g].mean() - aa[g].mean()), "lo": lo, "hi": hi}
    out["aa_t_gap_max"] = {"value": float(ts[g]), "lo": float(ts[g]), "hi": float(ts[g])}
    return out
