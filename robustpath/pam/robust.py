"""Proximal alternating minimization (PAM) over permutations and a Bezier curve:
robustpath's robust variant (the outer loop; relaxed permutations in
:mod:`robustpath.pam.relaxed`; settings and result in :mod:`robustpath.pam.robust_config`;
Tatro et al.'s own PAM in :mod:`robustpath.pam.tatro`).

Tatro et al. 2020 (*Optimizing Mode Connectivity via Neuron Alignment*, Sec. 3.2
and App.) ask whether the permutation found by neuron alignment is locally optimal
for the curve-finding problem

    min_{P, c} L(P, c),  L = E_{t ~ U(0,1)} E_{(x, y)} CE(f(x_adv; θ(t)), y),
    θ(t) = (1 - t)² θ0 + 2t(1 - t) c + t² P θ1,

where θ0 = model A, θ1 = model B, P ranges over the permutations of B's hidden
units (one per group of the graph-derived :class:`~.spec.PermutationSpec`) and
``x_adv`` is PGD against θ(t) (``attack=None``: clean). PAM alternates

* **permutation step** ``P_{k+1} ≈ argmin_P L(P, c_k) + ρ/2 ||P - P_k||²``: every
  group's permutation matrix is relaxed to a doubly stochastic matrix ``S`` starting
  at ``P_k``; ``perm_steps`` projected gradient steps on the curve loss plus the
  proximal term, one batch and one t ~ U(0, 1) each, the attack made against the
  relaxed curve at t (as :func:`robustpath.paths.fit.train_curve` does); then
  Hungarian rounding of ``S`` (:func:`~.context.solve_assignment`) and a check on
  fixed batches: the rounded candidate replaces ``P_k`` only if its curve loss is
  lower;
* **curve step** ``c_{k+1} ≈ argmin_c L(P_{k+1}, c)``: ``curve_epochs`` epochs of
  :func:`~robustpath.paths.fit.train_curve`, starting from ``c_k``.

Design decisions (facts a user needs):

* **The midpoint lives in A's frame and is carried unchanged** when P changes. θ(t)
  and c are expressed in the coordinates of θ0; P acts on θ1 only. This is PAM's
  block-coordinate structure (the permutation step holds c fixed), and it is why the
  proximal term matters: a P far from P_k leaves c, trained for P_k, out of place.
* **Relaxed application.** ``S`` acts on B's tensors as a matrix product along every
  axis the spec lists (:func:`relaxed_state`); for a permutation matrix it equals
  :func:`~.permute.apply` exactly. ``S[i, j]`` is the weight of B's unit ``j`` in
  unit ``i`` of the permuted model, so rounding maximises ``Σ_i S[i, p[i]]``.
* **Projection** (:func:`project_doubly_stochastic`): the Euclidean projection onto
  the Birkhoff polytope by Dykstra's alternating projections between the affine set
  {row and column sums 1} (closed form) and the nonnegative orthant, until the sums
  hold to ``project_tol`` (Sinkhorn balancing of the nonnegative iterate as a
  fallback when ``project_iters`` do not suffice). Not Sinkhorn alone: Sinkhorn is
  the KL projection, multiplicative, so every zero entry (all off-permutation entries
  at the start) would stay zero and the iterate could never leave the starting
  vertex; the Euclidean projection matches the Euclidean proximal term and moves mass
  onto new entries.
* **Step size in matrix-entry units.** The stochastic gradients of each group's
  matrix are averaged with momentum (``momentum``, bias-corrected; without it the
  one-batch, one-t gradients spread mass diffusely) and divided by a running RMS of
  that group's gradients (one scalar per matrix, decay 0.9), so ``lr`` means "typical
  change of an entry per step" for any architecture or loss scale.
* **Cost.** A permutation step costs about ``perm_steps`` curve-training batches plus
  one projection per group and step (~0.1 s for 128 units) plus ``2 x
  select_batches`` attacked evaluation batches for the check.
* Only the cross-entropy enters the permutation step (the curve's weight decay on
  θ(t) is a regulariser of the curve). BatchNorm normalises with batch statistics,
  as in curve training, so running statistics play no role.
* ``loss`` in the history is the curve loss on ``select_batches`` fixed training
  batches at stratified fixed t (t_j = (j + ½)/select_batches) with a seeded attack:
  the same numbers for every iteration and candidate, so they are comparable.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustpath import progress as progress_mod
from robustpath.align.permute import Permutation, apply, identity_permutation
from robustpath.align.spec import PermutationSpec, permutation_spec
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.data import info as data_info
from robustpath.errors import UserError
from robustpath.io.store import checkpoint_exists, config_hash, load_checkpoint, save_checkpoint
from robustpath.pam.relaxed import (
    _RelaxedCurve,
    permutation_matrix,
    project_doubly_stochastic,
    relaxed_state,
    round_to_permutation,
)
from robustpath.pam.robust_config import PAMConfig, PAMResult, _mean, changed  # noqa: F401  (re-exported)
from robustpath.paths.curves import build_curve


# ---------------------------------------------------------------- the algorithm
def _seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & ((1 << 64) - 1)
    return h & ((1 << 63) - 1)


def _perm_step(rc: _RelaxedCurve, perm: Permutation, controls: torch.Tensor, x, y,
               cfg: PAMConfig, attack, iteration: int, device, progress: bool):
    """Projected gradient steps on the relaxed permutations; returns the relaxed
    matrices (float64, doubly stochastic) and the mean loss of the steps."""
    prev = {g: permutation_matrix(p).to(device) for g, p in perm.items()}
    mats = {g: m.clone() for g, m in prev.items()}
    sq = {g: 0.0 for g in mats}
    avg = {g: torch.zeros_like(m) for g, m in mats.items()}
    g_data = torch.Generator().manual_seed(_seed(cfg.seed, iteration, 3))
    t_gen = torch.Generator().manual_seed(_seed(cfg.seed, iteration, 4))
    losses = []
    bar = progress_mod.bar(range(cfg.perm_steps), desc=f"PAM {iteration} permutation step",
                           unit="step", progress=progress)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(_seed(cfg.seed, iteration, 5))
        for step in bar:
            idx = torch.randint(len(x), (cfg.batch_size,), generator=g_data)
            xb, yb = x[idx].to(device), y[idx].to(device)
            t = float(torch.rand((), generator=t_gen))
            leaves = {g: m.detach().requires_grad_(True) for g, m in mats.items()}
            params, buffers = rc.at(t, {g: m.float() for g, m in leaves.items()}, controls)
            xa = attack(rc.point(t, params, buffers), xb, yb) if attack is not None else xb
            loss = F.cross_entropy(rc.ref.forward_batch_stats(xa, t, params, buffers), yb)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            with torch.no_grad():
                for (g, m), grad in zip(mats.items(), grads):
                    grad = torch.zeros_like(m) if grad is None else grad.to(m.dtype)
                    avg[g] = cfg.momentum * avg[g] + (1 - cfg.momentum) * grad
                    sq[g] = 0.9 * sq[g] + 0.1 * float(grad.pow(2).mean())
                    rms = math.sqrt(sq[g] / (1 - 0.9 ** (step + 1)))
                    mean = avg[g] / (1 - cfg.momentum ** (step + 1)) if cfg.momentum else grad
                    direction = mean / rms if rms > 0 else mean
                    mats[g] = project_doubly_stochastic(
                        m - cfg.lr * (direction + cfg.prox * (m - prev[g])),
                        cfg.project_iters, cfg.project_tol)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
    bar.close()
    return mats, sum(losses) / len(losses)


def _curve_step(model_a, model_b, perm, controls, x, y, cfg: PAMConfig, iteration: int,
                folder: Path, device, progress: bool):
    from robustpath.paths.fit import CurveTrainConfig, train_curve

    c = build_curve("bezier", model_a, apply(model_b, perm), cfg.bends).to(device)
    with torch.no_grad():
        c.controls.copy_(controls)
    tcfg = CurveTrainConfig(epochs=cfg.curve_epochs, batch_size=cfg.batch_size, lr=cfg.curve_lr,
                            seed=_seed(cfg.seed, iteration, 6) % (1 << 31),
                            attack=None if cfg.attack is None else AttackConfig(**cfg.attack.to_dict()))
    metrics = train_curve(c, x, y, tcfg, folder, device=device, progress=progress)
    return c.controls.detach().clone(), metrics


def _fingerprint(t: torch.Tensor) -> str:
    return config_hash({"shape": list(t.shape),
                        "sum": float(t.double().sum()), "abs": float(t.double().abs().sum()),
                        "head": t.reshape(-1)[:16].tolist()})


def pam(model_a: nn.Module, model_b: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
        cfg: PAMConfig | None = None, *, start: Permutation | None = None,
        init_controls: torch.Tensor | None = None, spec: PermutationSpec | None = None,
        work_dir: str | Path | None = None, device: str | torch.device = "cpu",
        progress: bool = True) -> PAMResult:
    """Proximal alternating minimization of the curve loss over B's permutation and the
    Bezier control points (see the module docstring).

    Args:
        model_a, model_b: endpoints θ0 and θ1 of one architecture; not modified.
        x_train, y_train: ``[N, C, H, W]`` pixels in [0, 1], ``[N]`` int64 labels.
        cfg: :class:`PAMConfig` (default: its defaults).
        start: starting permutation of B (default identity = unaligned). To start from
            an alignment, pass its permutation, or pass the aligned model as
            ``model_b`` with the identity (equivalent).
        init_controls: starting control points ``[bends, P]`` in A's frame (e.g. a curve
            already fitted for ``start``); default: a first curve step (iteration 0,
            ``curve_epochs`` epochs) from the straight-line points.
        spec: precomputed :func:`permutation_spec` (default: traced on 2 training images).
        work_dir: folder for per-iteration checkpoints; a run killed there resumes at
            its last finished outer iteration (same config, endpoints and start).
            Default: a temporary folder, removed at the end.
        device: where to compute. progress: bars (:mod:`robustpath.progress`).

    Returns a :class:`PAMResult`; ``apply(model_b, result.perm)`` computes B's function.
    """
    cfg = (cfg or PAMConfig()).validate()
    device = torch.device(device)
    model_a = model_a.to(device).eval()
    model_b = model_b.to(device).eval()
    if spec is None:
        spec = permutation_spec(model_a, x_train[:2].to(device))
    start = Permutation(spec, dict(start)) if start is not None else identity_permutation(spec)
    for g, n in spec.groups.items():
        if g not in start:
            start[g] = torch.arange(n)
    ref = build_curve("bezier", model_a, model_b, cfg.bends).to(device)
    rc = _RelaxedCurve(ref, model_b, spec)
    if init_controls is not None and tuple(init_controls.shape) != tuple(ref.controls.shape):
        raise UserError(f"init_controls has shape {tuple(init_controls.shape)}, "
                        f"expected {tuple(ref.controls.shape)}")

    # fixed batches and t for the candidate check and the reported loss
    g_sel = torch.Generator().manual_seed(_seed(cfg.seed, 7))
    sel = torch.randperm(len(x_train), generator=g_sel)[:cfg.select_batches * cfg.batch_size]
    sel_batches = [(x_train[i].to(device), y_train[i].to(device))
                   for i in sel.split(cfg.batch_size)]
    sel_ts = [(j + 0.5) / len(sel_batches) for j in range(len(sel_batches))]
    dataset = ref.meta.get("dataset")
    num_classes = data_info(dataset).num_classes if dataset else int(y_train.max()) + 1
    sel_attack = train_attack = None
    if cfg.attack is not None:
        sel_attack = build_attack(AttackConfig(**{**cfg.attack.to_dict(), "seed": cfg.seed}),
                                  num_classes)
        train_attack = build_attack(AttackConfig(**{**cfg.attack.to_dict(), "seed": None}),
                                    num_classes)

    def fixed_loss(perm: Permutation, controls: torch.Tensor) -> float:
        mats = {g: permutation_matrix(p, torch.float32).to(device) for g, p in perm.items()}
        return rc.loss(mats, controls, sel_batches, sel_ts, sel_attack)

    run_key = config_hash({"pam": cfg.to_dict(), "endpoints": ref.fingerprint(),
                           "start": start.to_dict(), "examples": len(x_train),
                           "init": None if init_controls is None else _fingerprint(init_controls)})
    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="robustpath-pam-")
        work_dir = tmp
    work = Path(work_dir)
    try:
        perm, controls, history = start, None, []
        for k in range(cfg.outer_iters, -1, -1):  # resume from the newest finished iteration
            path = work / f"iter-{k:03d}"
            if checkpoint_exists(path):
                tensors, meta = load_checkpoint(path, device)
                if meta.get("run_key") != run_key:
                    raise UserError(f"{work} holds a PAM run with another config or other "
                                    "endpoints; use a new folder")
                perm = Permutation(spec, {g: tensors[f"perm.{g}"] for g in spec.groups})
                controls, history = tensors["controls"], list(meta["history"])
                break

        def save(k: int) -> None:
            state = {"controls": controls, **{f"perm.{g}": p for g, p in perm.items()}}
            save_checkpoint(work / f"iter-{k:03d}", state, {"run_key": run_key, "history": history})
            shutil.rmtree(work / f"curve-{k:03d}", ignore_errors=True)

        if controls is None:  # iteration 0: the initial curve
            begin = time.perf_counter()
            record = {"iteration": 0, "accepted": None, "candidate_loss": None,
                      "relaxed_mass_moved": None, "candidate_changed": None,
                      "previous_loss": None, "perm_step_loss": None, "seconds_perm": 0.0,
                      "changed_vs_start": changed(start, start),
                      "changed_vs_previous": changed(start, start)}
            if init_controls is not None:
                controls = init_controls.detach().to(device).clone()
                record.update(curve_train_loss=None, seconds_curve=0.0, seconds_curve_epoch=None)
            else:
                t0 = time.perf_counter()
                controls, m = _curve_step(model_a, model_b, perm, ref.controls.detach(), x_train,
                                          y_train, cfg, 0, work / "curve-000", device, progress)
                record.update(curve_train_loss=m["train_loss"],
                              seconds_curve=time.perf_counter() - t0,
                              seconds_curve_epoch=m["seconds_per_epoch"])
            record["loss"] = fixed_loss(perm, controls)
            record["seconds"] = time.perf_counter() - begin
            history.append(record)
            save(0)

        bar = progress_mod.bar(range(len(history), cfg.outer_iters + 1), desc="PAM", unit="iter",
                               progress=progress)
        for k in bar:
            begin = time.perf_counter()
            mats, step_loss = _perm_step(rc, perm, controls, x_train, y_train, cfg, train_attack,
                                         k, device, progress)
            candidate = Permutation(spec, {g: round_to_permutation(m) for g, m in mats.items()})
            moved = {g: float(1.0 - m[torch.arange(len(perm[g])), perm[g].to(m.device)].mean())
                     for g, m in mats.items()}
            previous_loss = history[-1]["loss"]  # same fixed batches, same perm and controls
            if all(torch.equal(candidate[g], perm[g]) for g in spec.groups):
                candidate_loss, accepted = previous_loss, False
            else:
                candidate_loss = fixed_loss(candidate, controls)
                accepted = candidate_loss < previous_loss
            new = candidate if accepted else perm
            seconds_perm = time.perf_counter() - begin
            t0 = time.perf_counter()
            controls, m = _curve_step(model_a, model_b, new, controls, x_train, y_train, cfg, k,
                                      work / f"curve-{k:03d}", device, progress)
            seconds_curve = time.perf_counter() - t0
            record = {"iteration": k, "perm_step_loss": step_loss, "relaxed_mass_moved": moved,
                      "candidate_changed": changed(perm, candidate),
                      "previous_loss": previous_loss, "candidate_loss": candidate_loss,
                      "accepted": accepted, "changed_vs_start": changed(start, new),
                      "changed_vs_previous": changed(perm, new),
                      "curve_train_loss": m["train_loss"], "seconds_perm": seconds_perm,
                      "seconds_curve": seconds_curve, "seconds_curve_epoch": m["seconds_per_epoch"]}
            perm = new
            record["loss"] = fixed_loss(perm, controls)
            record["seconds"] = time.perf_counter() - begin
            history.append(record)
            save(k)
            bar.set_postfix(loss=f"{record['loss']:.4f}", accepted=accepted)
            if progress:
                frac = record["changed_vs_previous"]
                progress_mod.write(f"PAM {k}/{cfg.outer_iters}: loss {record['loss']:.4f} "
                           f"(candidate {candidate_loss:.4f} vs {previous_loss:.4f}, "
                           f"{'accepted' if accepted else 'kept'}), changed "
                           + ", ".join(f"{g} {v:.2f}" for g, v in frac.items())
                           + f" ({record['seconds']:.1f} s)")
        bar.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return PAMResult(perm=perm, start=start, controls=controls, history=history, config=cfg)


__all__ = ["PAMConfig", "PAMResult", "changed", "pam", "permutation_matrix",
           "project_doubly_stochastic", "relaxed_state", "round_to_permutation"]
