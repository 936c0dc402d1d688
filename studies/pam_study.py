"""``python -m studies.pam_study``: is neuron alignment locally optimal for the
robust curve-finding problem? (Tatro et al. 2020's PAM check, on the embedded default.)

Takes the default benchmark's two ``cnn-small`` Fashion-MNIST endpoints and their
activation alignment (model and saved permutation) from ``<run>/ckpt/``, found by the
run's stage keys (``make bench`` writes them; nothing is trained for them here), and the
quick preset's 10,000-image training subset, then:

1. fits reference quadratic Bezier curves, unaligned and aligned, with the quick
   preset's curve training (4 epochs, PGD-5 eps 0.1 in the loop, SGD lr 0.02 cosine)
   for two curve-training seeds (the run-to-run noise);
2. runs PAM (:mod:`robustpath.pam`, robust: PGD in the loop) from the
   alignment's permutation and from the identity, each starting from the seed-0
   reference curve of its start, for ``--outer-iters`` outer iterations of one
   permutation step and one curve epoch;
3. fits fresh curves (same budget and seeds as step 1) between A and B permuted by
   each PAM result (reused from step 1 when PAM changed no unit), so the four
   permutations are compared at an equal curve-training budget;
4. measures every curve's robust training loss: mean cross-entropy under PGD-5
   (seeded) on ``--eval-examples`` fixed training images at t = 0.1, 0.3, ..., 0.9,
   BatchNorm on batch statistics as in curve training.

Reports the fraction of units changed per layer, the losses, the seed-to-seed noise,
and seconds per PAM outer iteration against one curve epoch. Writes
``studies/results/pam_study/RESULTS.md`` and ``results.json``; curves and PAM states are
cached under ``studies/results/pam_study/ckpt/`` (a rerun reuses them). About 15 minutes on
2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import machine
from robustpath import progress as progress_mod
from robustpath.align import apply
from robustpath.attacks.base import build_attack
from robustpath.cli import ArgumentParser
from robustpath.config import BenchConfig, from_preset
from robustpath.device import resolve
from robustpath.engine import keys, stages, stages_align
from robustpath.errors import UserError, cli_main
from robustpath.io import store
from robustpath.io.store import atomic_write_json, atomic_write_text, load_model, provenance
from robustpath.pam import PAMConfig, pam
from robustpath.paths.curves import build_curve
from robustpath.paths.fit import CurveTrainConfig, train_curve

EVAL_T = (0.1, 0.3, 0.5, 0.7, 0.9)
LABELS = {"none": "unaligned", "activation": "aligned (act.)",
          "pam-activation": "PAM from aligned", "pam-none": "PAM from unaligned",
          "pam-none-prox0": "PAM from unaligned, no proximal term"}
# name -> (start, PAMConfig overrides); the last one probes whether the proximal term
# alone keeps PAM at its start
PAM_RUNS = {"pam-activation": ("activation", {}), "pam-none": ("none", {}),
            "pam-none-prox0": ("none", {"prox": 0.0})}


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m studies.pam_study", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--run", default="results/fashion-mnist-cnn-small-quick",
      help="bench run folder holding ckpt/endpoints and ckpt/align")
    a("--out", default="studies/results/pam_study", help="output folder")
    a("--outer-iters", type=int, default=3, help="PAM outer iterations")
    a("--perm-steps", type=int, default=None, help="PAM permutation-step gradient steps")
    a("--lr", type=float, default=None, help="PAM step size (matrix-entry units)")
    a("--prox", type=float, default=None, help="PAM proximal weight")
    a("--curve-epochs", type=int, default=None, help="reference curve epochs (preset: 4)")
    a("--seeds", default="0,1", help="curve-training seeds (noise)")
    a("--eval-examples", type=int, default=1000, help="training images for the loss")
    a("--train-subset", type=int, default=None,
      help="training images (default: the quick preset's 10,000; smaller only for smoke tests)")
    a("--threads", type=int, default=0,
      help="torch intra-op threads (0: torch's default); 1 is much faster when other "
      "processes share the cores")
    a("--device", default="auto")
    a("--no-progress", action="store_true")
    return p


def _run_config(run: Path) -> BenchConfig:
    """The bench run's configuration (its ``config.json``): its stage keys name its
    checkpoints."""
    saved = store.read_json(run / "config.json")
    if saved is None:
        raise UserError(f"no bench run in {run} (no config.json); run `make bench` first")
    fields = BenchConfig.__dataclass_fields__
    return BenchConfig(**{k: v for k, v in saved.items() if k in fields}).validate()


def _load_inputs(run: Path, device):
    """Endpoints (seed 0 = A, seed 1 = B), the activation-aligned B and the alignment's
    permutation (``{group: LongTensor}``) of a bench run, found by the run's stage keys
    (:mod:`robustpath.engine.keys`), each checkpoint's checksum verified. The permutation is the
    one the alignment stage saved; a cache written before the stage saved it has none
    (None: :func:`_activation_permutation` recomputes it)."""
    cfg = _run_config(run)

    def path(stage: str, name: str) -> Path:
        p = stages._ckpt(run, stage, name)
        if not store.checkpoint_exists(p):
            raise UserError(f"no checkpoint {p} (the run's stage keys); run `make bench` first")
        return p

    key_a, key_b = (store.config_hash(keys.endpoint_config(cfg, s).cache_key()) for s in (0, 1))
    pa = path("endpoints", f"{cfg.arch}-seed0-{key_a}")
    pb = path("endpoints", f"{cfg.arch}-seed1-{key_b}")
    key_ab = store.config_hash(keys.align_spec(cfg, "activation", key_a, key_b))
    aligned, meta = load_model(path("align", f"activation-{key_ab}"), device, require_checksum=True)
    perm = meta.get("perm")
    perm = None if perm is None else {g: torch.tensor(p, dtype=torch.long) for g, p in perm.items()}
    return (load_model(pa, device, require_checksum=True)[0].eval(),
            load_model(pb, device, require_checksum=True)[0].eval(), aligned.eval(), perm)


def _activation_permutation(model_a, model_b, aligned_b, data, device):
    """The activation alignment's permutation of B, recomputed as the bench's stage does
    (clean, first 2,000 training images), for caches written before the alignment stage
    saved it; None if it does not reproduce the cached aligned model."""
    from robustpath.align import align
    from robustpath.data import Batches

    n = stages_align.ALIGN_SAMPLES
    loader = Batches(data.x_train[:n], data.y_train[:n], 250, device=device)
    again, perm, _ = align(model_a, model_b, method="activation", data=loader)
    same = all(torch.equal(v, aligned_b.state_dict()[k]) for k, v in again.state_dict().items())
    return perm if same else None


def robust_curve_loss(curve, x, y, attack, batch_size: int = 250) -> dict[float, float]:
    """Mean cross-entropy at each t of :data:`EVAL_T` on ``(x, y)`` under ``attack`` made
    against θ(t) (BatchNorm on batch statistics, as in curve training)."""
    out = {}
    for t in EVAL_T:
        with torch.no_grad():
            params = curve.params_at(t)
        point = curve.point(t, params)
        total = 0.0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            xa = attack(point, xb, yb)
            with torch.no_grad():
                logits = curve.forward_batch_stats(xa, t, params, point.point_buffers)
                total += float(F.cross_entropy(logits, yb, reduction="sum"))
        out[t] = total / len(x)
    return out


def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def study(args) -> dict:
    device = resolve(args.device)
    progress = not args.no_progress
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    cfg = from_preset("quick", curve_epochs=args.curve_epochs, train_subset=args.train_subset)
    out = Path(args.out)
    ck = out / "ckpt"
    data = stages.RunData.load(cfg)
    model_a, model_b, aligned_b, act_perm = _load_inputs(Path(args.run), device)
    attack_cfg = cfg.train_attack()
    g = torch.Generator().manual_seed(99)
    idx = torch.randperm(len(data.x_train), generator=g)[:args.eval_examples]
    x_ev, y_ev = data.x_train[idx].to(device), data.y_train[idx].to(device)
    eval_attack = build_attack(type(attack_cfg)(**{**attack_cfg.to_dict(), "seed": 0}),
                               data.num_classes)
    started = time.perf_counter()
    load_start = machine.load_average()

    def fit(name: str, b, seed: int):
        """Curve between A and ``b``, cached under ``ckpt/curves/<name>-<endpoints>-s<seed>``."""
        c = build_curve("bezier", model_a, b, cfg.bends).to(device)
        tcfg = CurveTrainConfig(epochs=cfg.curve_epochs, batch_size=cfg.batch_size,
                                lr=cfg.curve_lr, seed=seed, augment=cfg.augment,
                                attack=cfg.train_attack())
        folder = ck / "curves" / f"{name}-{c.fingerprint()[:8]}-s{seed}"
        m = train_curve(c, data.x_train, data.y_train, tcfg, folder,
                        device=device, progress=progress)
        return c, m

    curves, rows = {}, {}
    bs = {"none": model_b, "activation": aligned_b}
    for name in ("none", "activation"):
        for s in seeds:
            curves[(name, s)] = fit(name, bs[name], s)

    pcfg = PAMConfig(outer_iters=args.outer_iters, curve_epochs=1, curve_lr=cfg.curve_lr,
                     batch_size=cfg.batch_size, attack=cfg.train_attack(), seed=0)
    for k, v in (("perm_steps", args.perm_steps), ("lr", args.lr), ("prox", args.prox)):
        if v is not None:
            setattr(pcfg, k, v)
    if act_perm is None:  # an alignment cached before the stage saved its permutation
        act_perm = _activation_permutation(model_a, model_b, aligned_b, data, device)
    pam_results = {}
    for name, (base, overrides) in PAM_RUNS.items():
        init = curves[(base, seeds[0])][0].controls.detach()
        run_cfg = PAMConfig.from_dict({**pcfg.to_dict(), **overrides})
        res = pam(model_a, bs[base], data.x_train, data.y_train, run_cfg, init_controls=init,
                  work_dir=ck / "pam" / name, device=device, progress=progress)
        pam_results[name] = res
        bs[name] = apply(bs[base], res.perm)
        for s in seeds:
            if res.perm.is_identity():  # same endpoints as the start: same curve
                curves[(name, s)] = curves[(base, s)]
            else:
                curves[(name, s)] = fit(name, bs[name], s)

    for (name, s), (c, m) in progress_mod.bar(curves.items(), desc="robust training loss",
                                              total=len(curves), progress=progress, leave=True):
        per_t = robust_curve_loss(c, x_ev, y_ev, eval_attack)
        rows[(name, s)] = {"per_t": per_t, "loss": sum(per_t.values()) / len(per_t),
                           "train_loss_last_epoch": m["train_loss"],
                           "seconds_per_epoch": m["seconds_per_epoch"]}
    elapsed = time.perf_counter() - started

    epoch_secs = [r["seconds_per_epoch"] for r in rows.values() if r["seconds_per_epoch"]]
    result = {
        "command": "python -m studies.pam_study " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": machine.info(device), "load_average": {"start": load_start,
                                                          "end": machine.load_average()},
        "seconds": elapsed, "pam_config": pcfg.to_dict(), "curve_epochs": cfg.curve_epochs,
        "seeds": seeds, "eval_examples": len(x_ev), "eval_t": list(EVAL_T),
        "curves": {f"{n}-s{s}": r for (n, s), r in rows.items()},
        "pam": {n: r.report() for n, r in pam_results.items()},
        "pam_none_agreement_with_alignment": None if act_perm is None else {
            name: {g: float((pam_results[name].perm[g] == act_perm[g]).float().mean())
                   for g in act_perm} for name in PAM_RUNS if PAM_RUNS[name][0] == "none"},
        "seconds_per_curve_epoch": sum(epoch_secs) / len(epoch_secs) if epoch_secs else None,
        "provenance": provenance(),
    }
    write_results(out, result)
    return result


def _verdict(result: dict) -> list[str]:
    curves, seeds = result["curves"], result["seeds"]

    def mean(name):
        return sum(curves[f"{name}-s{s}"]["loss"] for s in seeds) / len(seeds)

    noise = max(abs(curves[f"{n}-s{seeds[0]}"]["loss"] - curves[f"{n}-s{s}"]["loss"])
                for n in LABELS for s in seeds[1:]) if len(seeds) > 1 else None
    al, pa, un, pn = mean("activation"), mean("pam-activation"), mean("none"), mean("pam-none")
    fa = result["pam"]["pam-activation"]["fraction_changed_all"]
    fn = result["pam"]["pam-none"]["fraction_changed_all"]
    pz, fz = mean("pam-none-prox0"), result["pam"]["pam-none-prox0"]["fraction_changed_all"]
    lines = [f"- PAM from the alignment changed {100 * fa:.1f} % of all hidden units; its "
             f"curve's robust training loss minus the aligned curve's: {pa - al:+.4f} "
             f"(seed-to-seed noise, max over curves: {_fmt(noise)})."]
    lines.append(f"- PAM from the identity changed {100 * fn:.1f} % of all units; its loss "
                 f"{pn:.4f} vs unaligned {un:.4f} and aligned {al:.4f}: it closes "
                 f"{100 * (un - pn) / (un - al) if un != al else float('nan'):.0f} % of the "
                 "unaligned-aligned gap.")
    for name in PAM_RUNS:
        outer = [h for h in result["pam"][name]["history"] if h["iteration"] > 0]
        tried = [h for h in outer if h["candidate_loss"] != h["previous_loss"]]
        if tried:
            deltas = [h["candidate_loss"] - h["previous_loss"] for h in tried]
            width = max(max((h.get("candidate_changed") or {"-": 0.0}).values()) for h in tried)
            lines.append(f"- {LABELS[name]}: {sum(h['accepted'] for h in outer)} of {len(outer)} "
                         f"rounded candidates accepted; {len(tried)} differed from the current "
                         f"permutation (up to {100 * width:.0f} % of a layer's units) and changed "
                         f"the check loss by {min(deltas):+.4f} to {max(deltas):+.4f}.")
    lines.append(f"- Without the proximal term, PAM from the identity changed {100 * fz:.1f} % "
                 f"of all units; loss {pz:.4f} ({100 * (un - pz) / (un - al) if un != al else float('nan'):.0f} % "
                 "of the gap).")
    return lines


def write_results(out: Path, result: dict) -> None:
    seeds = result["seeds"]
    curves = result["curves"]
    md = ["# PAM study: is neuron alignment locally optimal? (robust, cnn-small, Fashion-MNIST)",
          "", "Command: `" + result["command"] + "`", "",
          f"Machine: {result['machine']['cpu']}; {result['machine']['torch threads']}; "
          f"torch {result['machine']['torch']}; device {result['machine']['device']}. "
          f"Load average at start {result['load_average']['start']}, at end "
          f"{result['load_average']['end']} (the machine is shared: timings are relative, both "
          "measured in this run). Whole study: "
          f"{result['seconds'] / 60:.1f} min.", "",
          "Endpoints, alignment and data: the default benchmark's (`results/fashion-mnist-"
          "cnn-small-quick`, 10,000 training images, PGD eps 0.1). PAM: "
          + ", ".join(f"{k} {v}" for k, v in result["pam_config"].items() if k != "attack")
          + f"; PGD-{result['pam_config']['attack']['steps']} eps "
          f"{result['pam_config']['attack']['eps']} in the loop. Reference and final curves: "
          f"{result['curve_epochs']} epochs, seeds {', '.join(map(str, seeds))}.", ""]

    md += ["## Robust training loss of the curve", "",
           f"Mean cross-entropy under seeded PGD-5 on {result['eval_examples']} fixed training "
           f"images, averaged over t = {', '.join(map(str, result['eval_t']))} (BN on batch "
           "statistics, as in training). `last epoch`: curve training's running loss.", ""]
    rows = []
    for name, label in LABELS.items():
        vals = [curves[f"{name}-s{s}"]["loss"] for s in seeds]
        last = [curves[f"{name}-s{s}"]["train_loss_last_epoch"] for s in seeds]
        mid = [curves[f"{name}-s{s}"]["per_t"].get("0.5", curves[f"{name}-s{s}"]["per_t"].get(0.5))
               for s in seeds]
        rows.append([label] + [_fmt(v) for v in vals] + [_fmt(sum(vals) / len(vals)),
                     _fmt(max(vals) - min(vals)), ", ".join(_fmt(v) for v in mid),
                     ", ".join(_fmt(v) for v in last)])
    md.append(_table(["curve"] + [f"loss seed {s}" for s in seeds] +
                     ["mean", "seed spread", "loss at t=0.5", "last epoch"], rows))
    md += ["", "## PAM: units changed and losses per outer iteration", ""]
    for name in PAM_RUNS:
        rep = result["pam"][name]
        md += [f"### {LABELS[name]}", "",
               "Fraction of units changed vs the start: "
               + ", ".join(f"{g} {100 * v:.1f} % (of {rep['groups'][g]['size']})"
                           for g, v in rep["fraction_changed"].items())
               + f"; all units {100 * rep['fraction_changed_all']:.1f} %.", ""]
        hrows = []
        for h in rep["history"]:
            moved = h.get("relaxed_mass_moved") or {}
            cand = h.get("candidate_changed") or {}
            hrows.append([str(h["iteration"]), _fmt(h["loss"]), _fmt(h["candidate_loss"]),
                          _fmt(h["previous_loss"]), "-" if h["accepted"] is None else str(h["accepted"]),
                          ", ".join(f"{v:.2f}" for v in cand.values()) or "-",
                          ", ".join(f"{v:.2f}" for v in h["changed_vs_previous"].values()),
                          ", ".join(f"{v:.2f}" for v in moved.values()) or "-",
                          _fmt(h["seconds_perm"], 1), _fmt(h["seconds_curve"], 1),
                          _fmt(h["seconds"], 1)])
        md.append(_table(["iter", "loss", "candidate", "previous", "accepted", "candidate changes",
                          "changed vs prev (per group)", "relaxed mass moved", "s perm step",
                          "s curve step", "s total"], hrows))
        md.append("")
    agree = result.get("pam_none_agreement_with_alignment")
    for name, per_group in (agree or {}).items():
        md += [f"{LABELS[name]}: fraction of units whose partner equals the activation "
               "alignment's: " + ", ".join(f"{g} {100 * v:.1f} %" for g, v in per_group.items())
               + ".", ""]
    md += ["Columns: `loss` curve loss on the fixed check batches after the iteration; "
           "`candidate` / `previous` the rounded candidate's and the kept permutation's loss "
           "with the midpoint fixed; `candidate changes` fraction of units the rounded "
           "candidate changes (accepted or not); `relaxed mass moved` 1 - mean S[i, P(i)] after the "
           "relaxed steps. Groups in order "
           + ", ".join(next(iter(result["pam"].values()))["fraction_changed"]) + ".", ""]
    secs = [rep["seconds_per_outer_iteration"] for rep in result["pam"].values()
            if rep["seconds_per_outer_iteration"]]
    md += ["## Time", "",
           f"Seconds per PAM outer iteration (permutation step + 1 curve epoch + loss checks): "
           f"{_fmt(sum(secs) / len(secs), 1) if secs else '-'}; one curve epoch (mean over this "
           f"run's curve trainings): {_fmt(result['seconds_per_curve_epoch'], 1)} s."]
    inner = [h for rep in result["pam"].values() for h in rep["history"]
             if h["iteration"] > 0 and h.get("seconds_curve_epoch")]
    if inner:
        perm_s = sum(h["seconds_perm"] for h in inner) / len(inner)
        epoch_s = sum(h["seconds_curve_epoch"] for h in inner) / len(inner)
        ratio = sum(h["seconds"] / h["seconds_curve_epoch"] for h in inner) / len(inner)
        md += [f"Measured inside the same PAM iterations (same load): permutation step "
               f"{perm_s:.1f} s (incl. the candidate check), curve epoch {epoch_s:.1f} s; one "
               f"outer iteration costs {ratio:.1f} curve epochs."]
        md.insert(len(md) - 1, "")
    md += ["",
           "## Verdict (computed)", ""] + _verdict(result) + [
        "", "How to read it: PAM judges a rounded candidate with the midpoint fixed (the one "
        "fitted for the current permutation), so it certifies block-coordinate local "
        "optimality only. A permutation that would need a different midpoint (such as the "
        "alignment's, seen from the unaligned curve) cannot be accepted in one step, which is "
        "why a start that PAM never leaves is not by itself evidence that the start is good: "
        "compare the PAM-from-identity row with the aligned row. Power: a variant that leaves "
        "the identity unchanged as well cannot tell whether the alignment is locally optimal; "
        "Tatro et al.'s PAM (robustpath.pam) on a planted mis-permutation: "
        "[pam_tatro](../pam_tatro/RESULTS.md).", ""]
    atomic_write_text(out / "RESULTS.md", "\n".join(md))
    atomic_write_json(out / "results.json", result)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = study(args)
    print((Path(args.out) / "RESULTS.md").read_text())
    print(f"study finished in {result['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
