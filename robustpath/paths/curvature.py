"""Input curvature along a path: the top eigenvalue of the input Hessian of the loss.

Zhao et al. 2020 (*Bridging Mode Connectivity in Loss Landscapes and Adversarial
Robustness*, ICLR 2020) relate the robust loss barrier of a path to the largest
eigenvalue of the Hessian of the loss with respect to the *input*: a network whose
loss curves sharply around its inputs is easier to attack. This module measures it at
every t of a path and correlates it with the path's robust loss.

* :func:`input_hessian_top_eig` - per example, the dominant eigenvalue of
  ``H_i = d²/dx_i² CE(f(x_i), y_i)`` (``x_i`` one image ``[C, H, W]``, pixels in
  [0, 1]) by power iteration with Hessian-vector products (double backward through
  ``torch.autograd.grad``). The examples of a batch run *independent* power
  iterations at once: the network is in eval mode, so example i's loss depends on
  ``x_i`` only and one HVP of the summed loss gives every ``H_i v_i``. Power iteration
  finds the eigenvalue of largest *magnitude*; the returned value is its Rayleigh
  quotient, so it keeps its sign. For ReLU networks (every architecture of
  :mod:`robustpath.models`) the input Hessian is ``J^T (diag p - p p^T) J``, positive
  semi-definite, so this is also the largest algebraic eigenvalue, the quantity Zhao
  et al. plot.
* :func:`path_curvature` - ``[T, N]`` eigenvalues along a path on a fixed set of
  clean test examples, the network at each t prepared exactly as path evaluation does
  (:func:`robustpath.engine.stages.point_setup`: BatchNorm statistics re-estimated on the
  same batches, or ``--renorm``'s correction; eval mode).
* :func:`curvature` - the bench stage, cached as ``<run>/ckpt/curvature/<key>.npz``
  (per-t partial results in ``<key>.partial/`` so a killed run resumes at its last t).
* :func:`summarise` / :func:`write` - per-t mean with a 95% percentile bootstrap CI
  over examples, Pearson r between mean curvature(t) and robust loss(t) on the grid,
  ``curvature.csv``, ``curvature.md`` and ``plots/curvature_<path_id>.png``.

Defaults: 20 power iterations, relative tolerance 1e-3 on the eigenvalue (every
example of a batch must meet it before a batch stops early), start vectors seeded.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from robustpath import progress as progress_mod
from robustpath.errors import UserError
from robustpath.io.cache import load_npz, recompute_notice, save_npz
from robustpath.io.store import CacheError, atomic_write_bytes, atomic_write_text, config_hash

ITERS = 20
TOL = 1e-3
BATCH = 100


def input_hessian_top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = ITERS,
                          tol: float = TOL, *, seed: int = 0, batch_size: int = BATCH,
                          return_iters: bool = False):
    """Dominant eigenvalue of each example's input Hessian of the cross-entropy loss.

    ``model``: in eval mode (BatchNorm on running statistics, so examples do not
    interact; a model in train mode raises UserError). ``x`` ``[N, ...]`` inputs,
    ``y`` ``[N]`` labels. ``iters`` >= 1 power iterations at most; a batch stops
    early once every example's Rayleigh quotient changed by at most ``tol`` times its
    magnitude between two iterations. Start vectors: standard normal from a generator
    seeded with ``seed`` (per batch ``seed + batch index``), so results repeat.

    Returns ``[N]`` float64 eigenvalues (largest by magnitude, signed; see the module
    docstring), and with ``return_iters`` also ``[N]`` int iterations used.
    """
    if model.training:
        raise UserError("input_hessian_top_eig needs the model in eval mode (in train mode "
                        "BatchNorm couples the examples of a batch)")
    if iters < 1:
        raise UserError(f"power iteration needs iters >= 1, got {iters}")
    if len(x) != len(y):
        raise UserError(f"x and y need the same length, got {len(x)} and {len(y)}")
    device = next((p.device for p in model.parameters()), x.device)
    # only the input needs gradients: no graph through the weights
    flags = [(p, p.requires_grad) for p in model.parameters()]
    eigs, used = [], []
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for b, i in enumerate(range(0, len(x), batch_size)):
            xb = x[i:i + batch_size].to(device)
            yb = y[i:i + batch_size].to(device)
            gen = torch.Generator(device="cpu").manual_seed(seed + b)
            v0 = torch.randn(xb.shape, generator=gen, dtype=xb.dtype).to(device)
            lam, k = _power(model, xb, yb, v0, iters, tol)
            eigs.append(lam)
            used.append(k)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    lam = torch.cat(eigs).double().cpu().numpy() if eigs else np.zeros(0)
    if return_iters:
        return lam, torch.cat(used).cpu().numpy() if used else np.zeros(0, dtype=np.int64)
    return lam


def _unit(v: torch.Tensor) -> torch.Tensor:
    """Each example's vector scaled to norm 1 (zero vectors stay zero)."""
    n = v.flatten(1).norm(dim=1).clamp_min(1e-30)
    return v / n.view(-1, *([1] * (v.dim() - 1)))


def _power(model, x, y, v0, iters, tol):
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")  # sum: example i's grad is its own
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        n = len(x)
        if not g.requires_grad:  # the loss is linear in x: the Hessian is zero
            return torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.int64)
        v = _unit(v0)
        lam = torch.full((n,), float("nan"), dtype=torch.float64, device=x.device)
        used = torch.zeros(n, dtype=torch.int64, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        for k in range(1, iters + 1):
            # one double-backward through the kept graph of g: every H_i v_i at once
            (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True)
            new = (v * hv).flatten(1).sum(1).double()  # Rayleigh quotient, |v_i| = 1
            conv = (new - lam).abs() <= tol * new.abs().clamp_min(1e-12)
            used = torch.where(done, used, torch.full_like(used, k))
            lam = torch.where(done, lam, new)
            done = done | conv
            if bool(done.all()):
                break
            v = torch.where(done.view(-1, *([1] * (v.dim() - 1))), v, _unit(hv.detach()))
    return lam.cpu(), used.cpu()


def path_curvature(model_at: Callable[[float], nn.Module], ts: Sequence[float], x: torch.Tensor,
                   y: torch.Tensor, setup, *, iters: int = ITERS, tol: float = TOL, seed: int = 0,
                   progress: bool = False, desc: str = "curvature",
                   done: dict[int, np.ndarray] | None = None,
                   on_point: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """``[T, N]`` input-Hessian top eigenvalues of ``model_at(t)`` for each t in ``ts``
    on the examples ``x`` ``[N, C, H, W]`` (pixels in [0, 1]), ``y`` ``[N]``.

    ``setup`` (:class:`robustpath.strong.stage.PointSetup`, e.g.
    :func:`robustpath.engine.stages.point_setup`) prepares each network as path evaluation
    does: BatchNorm re-estimated on the same batches, eval mode, on its device.
    ``done``: index -> ``[N]`` results already known (skipped); ``on_point(i, eig)`` is
    called after each new t (the stage saves it, so a killed run resumes).
    """
    done = dict(done or {})
    rows = []
    for i, t in enumerate(progress_mod.bar(list(ts), desc=desc, unit="t", progress=progress)):
        if i not in done:
            model = setup.prepare(model_at, float(t))
            done[i] = input_hessian_top_eig(model, x, y, iters, tol, seed=seed)
            if on_point is not None:
                on_point(i, done[i])
        rows.append(done[i])
    return np.stack(rows)


# ---------------------------------------------------------------- statistics
def bootstrap_mean(values: np.ndarray, *, bootstrap: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row mean of ``values`` ``[T, N]`` with its percentile bootstrap CI over the N
    examples (the same resample at every t, as :mod:`robustpath.stats.barrier` does).
    Returns ``(mean, lo, hi)``, each ``[T]``."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[1]
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64) / n
    boot = w @ v.T                                            # [B, T]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    return v.mean(1), lo, hi


def pearson(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Pearson ``(r, two-sided p)`` (scipy.stats.pearsonr; NaN for < 3 points or a
    constant series)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    from scipy.stats import pearsonr

    r, p = pearsonr(a, b)
    return float(r), float(p)


def summarise(path_id: str, ident: dict, ts: np.ndarray, eig: np.ndarray, robust_loss: np.ndarray,
              *, bootstrap: int = 1000) -> tuple[pd.DataFrame, dict]:
    """Rows of ``curvature.csv`` for one path (per t: mean, CI, the path's robust loss
    at that t) and its Pearson row ``{path_id, ..., r, p, t_points}``."""
    mean, lo, hi = bootstrap_mean(eig, bootstrap=bootstrap)
    rows = pd.DataFrame({"path_id": path_id, **ident, "t": ts, "n": eig.shape[1], "mean": mean,
                         "ci_lo": lo, "ci_hi": hi, "robust_loss": robust_loss})
    r, p = pearson(mean, robust_loss)
    return rows, {"path_id": path_id, **ident, "pearson_r": r, "pearson_p": p,
                  "t_points": len(ts), "n": int(eig.shape[1])}


# ---------------------------------------------------------------- the stage
def stage_spec(cfg, curve_key: str) -> dict:
    """What a path's curvature depends on: the curve, the t grid, BatchNorm
    re-estimation (as :func:`robustpath.engine.stages.path_eval`), the examples, the power
    iteration."""
    return {"curve": curve_key, "t_points": cfg.t_points, "bn_batches": cfg.bn_batches,
            "bn_inputs": cfg.bn_inputs, "bn_attack": cfg.train_attack().to_dict(),
            "test_subset": cfg.test_subset, "train_subset": cfg.train_subset,
            "examples": cfg.curvature_examples, "iters": cfg.curvature_iters, "tol": TOL,
            "inputs": "clean", "seed": 0,
            # as path evaluation: published endpoints may keep their own statistics
            **({} if cfg.bn_endpoints else {"bn_endpoints": False}),
            **_renorm_spec(cfg)}


def _renorm_spec(cfg) -> dict:
    """``--renorm`` in the key as in path evaluation's (absent for bn-reset)."""
    from robustpath.paths.repair import renorm_spec

    return renorm_spec(cfg)


def compute_path(cfg, c, x, y, setup, spec, partial: Path, progress: bool, desc: str) -> np.ndarray:
    """The stage's computation (a function of its own so tests can tell whether it ran):
    ``[T, N]`` eigenvalues on the grid, resuming from the per-t entries in ``partial``."""
    from robustpath.paths.evaluate import t_grid

    ts = t_grid(cfg.t_points)
    done = {}
    for i, t in enumerate(ts):
        try:
            got = load_npz(partial / f"t{i}.npz", {**spec, "t": float(t)})
        except CacheError as e:
            recompute_notice(e, f"curvature {desc} at t={t:g}")
            got = None
        if got is not None:
            done[i] = got["eig"]

    def keep(i, eig):
        save_npz(partial / f"t{i}.npz", {"eig": eig}, {**spec, "t": float(ts[i])})

    return path_curvature(c.model_at, ts, x, y, setup, iters=cfg.curvature_iters, tol=TOL,
                          progress=progress, desc=desc, done=done, on_point=keep)


def check_examples(cfg, n_test: int) -> None:
    """``--curvature N`` needs N of the ``n_test`` loaded test examples; the bench checks it
    once the data is loaded, before any training (``--test-subset 0`` means all, so the
    config alone cannot tell)."""
    n = cfg.curvature_examples
    if n and not 1 <= n <= n_test:
        raise UserError(f"--curvature must lie in 1..{n_test} (the test examples), got {n}")


def curvature(cfg, c, curve_key: str, run_dir: Path, data, device, progress: bool = True,
              desc: str = "curvature") -> dict[str, np.ndarray]:
    """The curvature stage of one path: ``{"ts" [T], "eig" [T, N]}`` on the t grid for
    the first ``cfg.curvature_examples`` test examples; cached as
    ``ckpt/curvature/<key>.npz`` with ``key = config_hash(stage_spec(cfg, curve_key))``.
    ``c``: the curve, or a zero-argument function returning it (called only on a miss)."""
    from robustpath.engine.stages import point_setup
    from robustpath.io.lock import entry_lock

    n = cfg.curvature_examples
    if n < 1:
        raise UserError(f"--curvature must be >= 1 for the curvature stage, got {n}")
    check_examples(cfg, len(data.x_test))
    spec = stage_spec(cfg, curve_key)
    key = config_hash(spec)
    path = Path(run_dir) / "ckpt" / "curvature" / f"{key}.npz"
    with entry_lock(path):
        try:
            arrays = load_npz(path, spec)
            if arrays is not None:
                return arrays
        except CacheError as e:
            recompute_notice(e, f"curvature {desc}")
        partial = path.with_suffix(".partial")
        if not isinstance(c, nn.Module):  # a deferred curve (the zoo loads it only when needed)
            c = c()
        # the network at t as path evaluation measured it (BN reset, or --renorm's)
        setup = point_setup(cfg, data, device, model_at=c.model_at,
                            recompute_ends=bool(cfg.bn_endpoints))
        eig = compute_path(cfg, c, data.x_test[:n], data.y_test[:n], setup, spec, partial,
                           progress, desc)
        from robustpath.paths.evaluate import t_grid

        arrays = {"ts": t_grid(cfg.t_points), "eig": eig}
        save_npz(path, arrays, spec)
        shutil.rmtree(partial, ignore_errors=True)  # resume state, now in the entry
    return arrays


# ---------------------------------------------------------------- outputs
def write(run_dir: str | Path, paths: dict[str, tuple[dict, dict, object]], *,
          bootstrap: int = 1000, title: str = "") -> list[Path]:
    """Write ``curvature.csv``, ``curvature.md`` and ``plots/curvature_<path_id>.png``.

    ``paths``: path_id -> (identity columns, stage arrays, the path's
    :class:`robustpath.paths.evaluate.PathResult`); the robust loss is the grid's mean over
    all test examples of the path evaluation. Returns the files written."""
    run_dir = Path(run_dir)
    frames, pear = [], []
    for pid, (ident, arrays, res) in paths.items():
        grid = res.grid()
        if not np.allclose(grid.ts, arrays["ts"]):
            raise UserError(f"curvature of {pid} was computed on another t grid than its path")
        rows, pr = summarise(pid, ident, arrays["ts"], arrays["eig"],
                             grid.per_t()["robust_loss"], bootstrap=bootstrap)
        frames.append(rows)
        pear.append(pr)
    table = pd.concat(frames, ignore_index=True)
    written = [run_dir / "curvature.csv", run_dir / "curvature.md"]
    atomic_write_text(written[0], table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(written[1], markdown(pd.DataFrame(pear)))
    for pr in pear:
        pid = pr["path_id"]
        written.append(plot(table[table["path_id"] == pid],
                            run_dir / "plots" / f"curvature_{pid}.png",
                            title=f"{title}{pid} (Pearson r = {pr['pearson_r']:.2f})"))
    return written


def markdown(pear: pd.DataFrame) -> str:
    """The per-path Pearson table as Markdown."""
    lines = ["# Input curvature vs robust loss along each path", "",
             "Top eigenvalue of the input Hessian of the CE loss (power iteration, clean "
             "test examples), per-t mean over the examples; Pearson r between that mean "
             "and the path's robust loss over the t grid (Zhao et al. 2020).", "",
             "| path | n | t points | Pearson r | p |", "|---|---|---|---|---|"]
    for _, r in pear.iterrows():
        lines.append(f"| {r['path_id']} | {r['n']} | {r['t_points']} | {r['pearson_r']:.3f} | "
                     f"{r['pearson_p']:.2g} |")
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, out: Path, *, title: str = "") -> Path:
    """Mean curvature (with its CI band, left axis) beside the robust loss (right axis)
    against t; PNG without a date in its metadata (reruns give the same bytes)."""
    from robustpath.report.style import COLUMN, DPI, OKABE_ITO, paper_style

    with paper_style() as plt:
        fig, ax = plt.subplots(figsize=(COLUMN, 2.4), layout="constrained")
        ax.fill_between(rows["t"], rows["ci_lo"], rows["ci_hi"], color=OKABE_ITO["blue"],
                        alpha=0.25, linewidth=0)
        ax.plot(rows["t"], rows["mean"], color=OKABE_ITO["blue"], marker="o", markersize=3,
                label="input-Hessian top eigenvalue")
        ax.set_xlabel("t (position along the path)")
        ax.set_ylabel("top eigenvalue (mean, 95% CI)", color=OKABE_ITO["blue"])
        ax.set_xlim(0, 1)
        ax.grid(True)
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        ax2.plot(rows["t"], rows["robust_loss"], color=OKABE_ITO["vermillion"], linestyle="--",
                 marker="s", markersize=3, label="robust loss")
        ax2.set_ylabel("robust loss (nats)", color=OKABE_ITO["vermillion"])
        if title:
            ax.set_title(title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


# ---------------------------------------------------------------- its registration
def _run(inp) -> dict:
    return {"curvature": curvature(inp.cfg, inp.curve, inp.curve_key, inp.root, inp.data,
                                   inp.device, inp.progress, desc=inp.desc)}


def _work(cfg) -> float:  # a node's cost grows with examples x t x attack steps
    return ((cfg.test_subset or 10000) * cfg.t_points * (cfg.eval_steps + 1)
            * max(cfg.restarts, 1))


def _register() -> None:
    from robustpath.engine.path_stages import PathStage, register, single

    register(PathStage(
        name="curvature", label="curvature", seconds=25.2, work=_work,
        applies=lambda info: bool(info.cfg.curvature_examples),
        parts=single(lambda info: {"curvature": stage_spec(info.cfg, info.curve_key)}),
        run=_run,
        collect=lambda ref, res: (ref.identity, res["main"]["curvature"], ref.result),
        write=lambda run_dir, cfg, entries: write(run_dir, entries, bootstrap=cfg.bootstrap)))


_register()
