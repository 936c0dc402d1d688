"""Outputs of the strong stage (:mod:`robustpath.strong`) and its table metrics.

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

:func:`strong_metrics` gives the summary-table columns with 95% bootstrap CIs over
the subset's examples (the same resample at every point): ``aa_robust_worst`` (AA
accuracy at the path's worst t), ``aa_acc_barrier`` ((1 - t*) AA(0) + t* AA(1) -
AA(t*)) and ``aa_pgd_gap`` (PGD(t*) - AA(t*)).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .store import atomic_write_bytes, atomic_write_json, atomic_write_text, git_revision
from .strong import StrongPath, StrongPoint

STRONG_METRICS = ("aa_robust_worst", "aa_acc_barrier", "aa_pgd_gap")
NAMES = ("clean", "pgd", "aa", "pgd_many", "transfer_a", "transfer_b")


def frame(paths: dict[str, tuple[dict, StrongPath]]) -> pd.DataFrame:
    """``paths``: path_id -> (identity columns, StrongPath); one row per point."""
    rows = []
    for pid, (ident, sp) in paths.items():
        for p in sp.points:
            a = p.arrays
            worst = a["pgd"] & a["aa"] & a["pgd_many"]
            rows.append({"path_id": pid, **ident, "role": p.role, "t": p.t, "n": len(sp.indices),
                         "clean_acc": p.acc("clean"), "robust_acc_pgd": p.acc("pgd"),
                         "robust_acc_aa": p.acc("aa"), "robust_acc_pgd_many": p.acc("pgd_many"),
                         "robust_acc_worst": float(worst.mean()),
                         "gap_pgd_aa": p.acc("pgd") - p.acc("aa"),
                         "transfer_acc_a": p.acc("transfer_a"), "transfer_acc_b": p.acc("transfer_b"),
                         "transfer_p_a": p.meta["transfer_p_a"], "transfer_p_b": p.meta["transfer_p_b"],
                         "masking": bool(p.meta["transfer_flag_a"] or p.meta["transfer_flag_b"]),
                         "aa_version": p.meta["aa"]["version"],
                         "aa_grad_passes": p.meta["aa_grad_passes"],
                         "clean_matches_path": p.meta["clean_matches_path"],
                         "aa_warnings": " | ".join(p.meta["aa_warnings"])})
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
    s = any_sp.settings if any_sp else {}
    note = (f"# Strong evaluation\n\nAccuracies in percent on {len(any_sp.indices) if any_sp else 0} "
            f"test examples (a seeded subset, the same at every point). robust_acc_pgd: the "
            f"evaluation attack ({cfg.get('attack', 'pgd')}, {cfg.get('eval_steps', '?')} steps); "
            f"robust_acc_aa: AutoAttack {s.get('aa_version', 'standard')} (Croce & Hein's code, "
            f"pyautoattack); robust_acc_pgd_many: PGD-{s.get('pgd_steps')} x "
            f"{s.get('pgd_restarts')} restarts; robust_acc_worst: robust to all three; "
            "gap_pgd_aa = robust_acc_pgd - robust_acc_aa. transfer_acc_a/b: accuracy on the "
            "evaluation attack's examples made against endpoint A / B; masking = FLAG where one "
            "beats the direct attack beyond sampling error (one-sided exact McNemar, "
            "Bonferroni over the path's tests, level 0.05). aa_grad_passes: AutoAttack's "
            "gradient passes per example. role worst: the path's lowest PGD robust accuracy "
            "over grid and refinement.")
    atomic_write_text(run_dir / "strong_eval.md", _md(f, note))
    rev = (provenance or {}).get("git_revision") or git_revision()
    for pid, (ident, sp) in paths.items():
        for p in sp.points:
            atomic_write_json(run_dir / "cards" / f"{pid}-{p.role}.json",
                              card(cfg, ident, sp, p, rev))
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


def strong_metrics(d: dict[str, np.ndarray], *, bootstrap: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict[str, dict[str, float]]:
    """Point estimates and bootstrap CIs of :data:`STRONG_METRICS` for one path."""
    need = [f"{r}/{k}" for r in ("a", "b", "worst") for k in ("aa", "pgd")] + ["worst/t"]
    if any(k not in d for k in need):
        return {}
    t = float(d["worst/t"][0])
    n = len(d["a/aa"])
    stack = np.stack([d["a/aa"], d["b/aa"], d["worst/aa"], d["worst/pgd"]]).astype(np.float64)

    def metrics(acc):  # acc: [..., 4]
        a0, a1, aw, pw = acc[..., 0], acc[..., 1], acc[..., 2], acc[..., 3]
        return {"aa_robust_worst": aw, "aa_acc_barrier": (1 - t) * a0 + t * a1 - aw,
                "aa_pgd_gap": pw - aw}

    point = metrics(stack.mean(1))
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64) / n
    boot = metrics(w @ stack.T)
    alpha = (1 - level) / 2
    out = {}
    for name in STRONG_METRICS:
        lo, hi = np.quantile(boot[name], [alpha, 1 - alpha])
        out[name] = {"value": float(point[name]), "lo": float(lo), "hi": float(hi)}
    out["aa_t_worst"] = {"value": t, "lo": t, "hi": t}
    return out
