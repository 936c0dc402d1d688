"""``python -m robustpath.soup``: N >= 3 robust endpoints merged into one basin.

Trains (or reloads, :func:`robustpath.engine.stages.endpoint`) endpoints with seeds 0..N-1,
aligns them (``--align weight``: Git Re-Basin's MergeMany; ``activation``: onto model
0; ``none``), and measures, for the aligned and the unaligned models, the uniform soup,
the triangle of models 0, 1, 2 on a barycentric grid and the line between every pair
(barrier matrix). Every computation is cached in ``<out>/ckpt/soup/`` (a killed run
resumes, per point); outputs: ``soup.csv``, ``triangle.csv``, ``barrier_matrix.csv``,
``triangle.png`` (one colour scale for all methods; ``triangle_<method>.png`` each on
its own), ``barrier_matrix.png``, ``merge.json``, ``summary.md``.

Example: ``python -m robustpath.soup --models 3 --align weight --grid 8 --out runs/soup``.

Scope: the N models are endpoints trained here (seeds 0..N-1, the bench's recipe); loaded
(RobustBench) models are not merged. For N loaded models the pairwise barrier matrix is
``python -m robustpath.zoo compare`` (pairwise alignment, no common basin, no soup).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from robustpath import data as data_mod
from robustpath import runtime
from robustpath.attacks.base import build_attack
from robustpath.cli import (
    ArgumentParser,
    add_run_options,
    add_threat_flags,
    data_root,
    parse_with_config,
    split_list,
)
from robustpath.config import MAX_BOOTSTRAP, BenchConfig, from_preset
from robustpath.device import resolve
from robustpath.engine import stages, stages_align
from robustpath.errors import UserError, cli_main
from robustpath.io import store
from robustpath.io.cache import BoundPointCache
from robustpath.io.lock import run_lock
from robustpath.io.store import atomic_write_json, atomic_write_text, config_hash
from robustpath.soup.merge import MERGERS, apply_perms, merge, perms_from_arrays, perms_to_arrays
from robustpath.soup.triangle import (
    PointEval,
    SimplexRepair,
    accuracy_rows,
    barrier_table,
    cached,
    evaluate_mixtures,
    line_weights,
    pair_lines,
    soup,
    triangle,
)


@dataclass
class SoupConfig:
    """Settings of a soup run. ``models``: endpoints (seeds 0..models-1, >= 3);
    ``align``: weight | activation | none, or a comma-separated list (the unaligned
    models are always measured too); ``grid``: K, the triangle's barycentric step 1/K and the pairs' t step;
    the rest as in :class:`robustpath.config.BenchConfig` (None: the preset's)."""

    models: int = 3
    align: str = "weight"
    grid: int = 8
    preset: str = "quick"
    dataset: str | None = None
    arch: str | None = None
    width: float | None = None
    norm: str | None = None      # --threat-model (None: the preset's, L-inf)
    eps: str | None = None
    step_size: str | None = None
    steps: int | None = None
    train_steps: int | None = None
    epochs: int | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    bn_inputs: str | None = None
    bn_batches: int | None = None
    align_inputs: str = "clean"
    renorm: str = "bn-reset"
    merge_seed: int = 0
    bootstrap: int = 1000
    data_root: str | None = None
    device: str = "auto"
    out: str = "runs/soup"

    def validate(self) -> SoupConfig:
        if self.models < 3:
            raise UserError(f"--models must be >= 3 (two models: python -m robustpath.bench), "
                            f"got {self.models}")
        for m in split_list(self.align) or [""]:
            MERGERS.get(m)
        if not 1 <= self.grid <= 64:
            raise UserError(f"--grid must be in 1..64 (points: (K+1)(K+2)/2), got {self.grid}")
        if self.align_inputs not in ("clean", "adv"):
            raise UserError(f"--align-inputs must be clean or adv, got {self.align_inputs!r}")
        from robustpath.paths.repair import RENORMS

        RENORMS.get(self.renorm)  # one-line UserError listing the choices
        if not 1 <= self.bootstrap <= MAX_BOOTSTRAP:
            raise UserError(f"--bootstrap must be in 1..{MAX_BOOTSTRAP}, got {self.bootstrap}")
        if not str(self.out).strip():  # Path("") is the current folder: outputs land there
            raise UserError("--out must name a folder, got an empty string")
        from robustpath.train.loop import check_seed

        check_seed(self.merge_seed, "--merge-seed")  # before training, not when merging
        self.bench()
        return self

    def bench(self) -> BenchConfig:
        """The BenchConfig whose endpoint, data and attack settings this run shares."""
        cfg = from_preset(self.preset, dataset=self.dataset, arch=self.arch, width=self.width,
                          norm=self.norm, eps=self.eps, step_size=self.step_size,
                          eval_steps=self.steps, train_steps=self.train_steps,
                          endpoint_epochs=self.epochs, train_subset=self.train_subset,
                          test_subset=self.test_subset, bn_inputs=self.bn_inputs,
                          bn_batches=self.bn_batches, align_inputs=self.align_inputs,
                          data_root=self.data_root, device=self.device).validate()
        cfg.seeds, cfg.out = list(range(self.models)), self.out  # validate wants pairs
        return cfg

    def methods(self) -> list[str]:
        """``none`` first (the baseline), then each method of ``align``."""
        return list(dict.fromkeys(["none", *split_list(self.align)]))


def parser() -> argparse.ArgumentParser:
    from robustpath.bench import preset_default
    from robustpath.config import PRESETS

    p = ArgumentParser(prog="python -m robustpath.soup", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--models", type=int, default=3, help="number of endpoints (seeds 0..N-1), at least 3")
    a("--align", default="weight", help=f"merge method: {', '.join(MERGERS.names())} (weight: "
      "MergeMany; activation: onto model 0), or several comma-separated; the unaligned "
      "models (none) are always measured too")
    a("--grid", type=int, default=8, help="barycentric step 1/K of the triangle of models 0, 1, 2 "
      "((K+1)(K+2)/2 points) and t step of every pair's line")
    a("--preset", default="quick", help=f"settings bundle: {', '.join(PRESETS.names())}")
    a("--dataset", default=None, help=f"dataset ({preset_default('dataset')})")
    a("--data-root", default=None, type=data_root,
      help="an existing folder with dataset files (default ./data)")
    a("--arch", default=None, help=f"architecture ({preset_default('arch')})")
    a("--width", type=float, default=None, help=f"width multiplier ({preset_default('width')})")
    add_threat_flags(p, also="in training and evaluation")
    a("--steps", type=int, default=None, help=f"PGD steps in evaluation ({preset_default('eval_steps')})")
    a("--train-steps", type=int, default=None, help=f"PGD steps in endpoint training ({preset_default('train_steps')})")
    a("--epochs", type=int, default=None, help=f"endpoint training epochs ({preset_default('endpoint_epochs')})")
    a("--train-subset", type=int, default=None, help=f"training examples (0 = all; {preset_default('train_subset')})")
    a("--test-subset", type=int, default=None, help=f"test examples (0 = all; {preset_default('test_subset')})")
    a("--bn-inputs", default=None, help="BN recomputed at each point on clean or adv inputs "
      f"({preset_default('bn_inputs')})")
    a("--bn-batches", type=int, default=None, help="training batches for BN recomputation "
      f"({preset_default('bn_batches')})")
    a("--align-inputs", default="clean", help="activation matching on clean or adv inputs")
    a("--renorm", default="bn-reset", help="how every point is renormalised: bn-reset "
      "(BatchNorm statistics re-estimated, --bn-inputs), repair / repair-adv (REPAIR: unit "
      "statistics set to the barycentric mix of the models' own, clean or PGD inputs; "
      "robustpath.paths.repair), none (mixed statistics as they are)")
    a("--merge-seed", type=int, default=0, help="visiting order of MergeMany's sweeps")
    a("--bootstrap", type=int, default=1000, help="bootstrap resamples for the barrier CIs")
    a("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    a("--out", default="runs/soup", help="run folder (default runs/soup, git-ignored; "
      "checkpoints in <out>/ckpt/)")
    a("--no-progress", action="store_true", help="hide progress bars")
    add_run_options(p)
    return p


def config_from_args(args) -> SoupConfig:
    keys = set(SoupConfig.__dataclass_fields__)
    return SoupConfig(**{k: v for k, v in vars(args).items() if k in keys}).validate()


#: SoupConfig fields whose flag is not --<field-with-dashes>
FLAGS = {"norm": "--threat-model"}


def _point_eval(sc: SoupConfig, cfg: BenchConfig, data, device, run_dir: Path, aligned,
                mkey: str) -> tuple[PointEval, str]:
    """Measured exactly as :func:`robustpath.engine.stages.path_eval` measures a path point
    (``--renorm bn-reset``); REPAIR's points depend on the merged models (``mkey``)."""
    bn_attack = replace(cfg.train_attack(), seed=1)
    spec = {"dataset": cfg.dataset, "bn_batches": cfg.bn_batches, "bn_inputs": cfg.bn_inputs,
            "bn_attack": bn_attack.to_dict(), "attack": cfg.eval_attack().to_dict(),
            "test_subset": cfg.test_subset, "train_subset": cfg.train_subset}
    renorm = None
    bn_data = list(data.train_batches(cfg, seed=0, device=device))[: cfg.bn_batches]
    from robustpath.paths.repair import RENORMS

    if RENORMS.get(sc.renorm).in_key:  # absent for bn-reset: its caches keep their keys
        spec.update(renorm=sc.renorm, merge=mkey)
        renorm = (lambda m, w: m.eval()) if sc.renorm == "none" else SimplexRepair(
            sc.renorm, aligned, bn_data, build_attack(bn_attack, data.num_classes))
    key = config_hash(spec)
    return PointEval(data.x_test, data.y_test, build_attack(cfg.eval_attack(), data.num_classes),
                     bn_data=bn_data, bn_inputs=cfg.bn_inputs,
                     bn_attack=build_attack(bn_attack, data.num_classes), device=device,
                     cache=BoundPointCache(run_dir / "ckpt" / "soup" / "points" / key),
                     renorm=renorm), key


def _merged(sc: SoupConfig, cfg: BenchConfig, method: str, models, keys, data, device,
            folder: Path):
    """Aligned models and the merge report, the permutations cached as ``merge-<key>.npz``."""
    from robustpath.align import permutation_spec

    spec = {"what": "merge", "method": method, "endpoints": keys, "seed": sc.merge_seed}
    loader = attack = None
    if method == "activation":
        spec.update(inputs=cfg.align_inputs, samples=stages_align.ALIGN_SAMPLES)
        loader = data_mod.Batches(data.x_train[:stages_align.ALIGN_SAMPLES],
                                  data.y_train[:stages_align.ALIGN_SAMPLES], 250, device=device)
        if cfg.align_inputs == "adv":
            spec["attack"] = cfg.train_attack().to_dict()
            attack = build_attack(cfg.train_attack(), data.num_classes)
    key = config_hash(spec)
    pspec = permutation_spec(models[0], data.x_train[:2].to(device))

    def compute():
        res = merge(models, method, spec=pspec, data=loader, inputs=cfg.align_inputs,
                    attack=attack, seed=sc.merge_seed)
        return {**perms_to_arrays(res.perms), "report": np.array(json.dumps(res.report()))}

    arrays = cached(folder / f"merge-{key}.npz", spec, compute, f"merge {method}")
    aligned = apply_perms(models, perms_from_arrays(pspec, arrays))
    return aligned, json.loads(str(arrays["report"])), key


def run(sc: SoupConfig, *, progress: bool = True, command: str | None = None) -> dict:
    """All stages of a soup run; returns the frames written (``soup``, ``triangle``,
    ``barrier``)."""
    cfg = sc.bench()
    device = resolve(cfg.device)
    run_dir = Path(sc.out)
    old = store.read_json(run_dir / "config.json")
    if old is not None and not {"models", "grid", "merge_seed"} <= set(old):
        # a bench or zoo run: soup's config.json, command.txt, summary.md would replace its own
        raise UserError(f"{run_dir} holds another kind of run (its config.json is not a soup's); "
                        "use another --out")
    data = stages.RunData.load(cfg)
    store.check_writable(run_dir)
    with run_lock(run_dir):
        with runtime.use(runtime.Runtime.of(cfg, progress=progress)):
            return _run(sc, cfg, run_dir, data, device, progress, command)


def _run(sc, cfg, run_dir, data, device, progress, command) -> dict:
    t0 = time.perf_counter()
    folder = run_dir / "ckpt" / "soup"
    models, keys, metrics = [], [], []
    for seed in range(sc.models):
        m, met, k = stages.endpoint(cfg, seed, run_dir, data, device, progress)
        models.append(m)
        keys.append(k)
        metrics.append(met)
    names = [f"seed{s}" for s in range(sc.models)]
    soup_rows, tri_rows, records, panels, reports = [], [], [], {}, {}
    for method in sc.methods():
        aligned, reports[method], mkey = _merged(sc, cfg, method, models, keys, data, device,
                                                 folder)
        point, pkey = _point_eval(sc, cfg, data, device, run_dir, aligned, mkey)
        base = {"merge": mkey, "point": pkey}
        s = accuracy_rows(cached(folder / f"soup-{config_hash({**base, 'what': 'soup'})}.npz",
                                 {**base, "what": "soup"}, lambda a=aligned, p=point: soup(a, p),
                                 f"soup {method}"))
        tspec = {**base, "what": "triangle", "grid": sc.grid, "vertices": [0, 1, 2]}
        tri = cached(folder / f"triangle-{config_hash(tspec)}.npz", tspec,
                     lambda a=aligned, p=point, d=f"triangle {method}": triangle(
                         a, sc.grid, p, progress=progress, desc=d), f"triangle {method}")
        acc = accuracy_rows(tri)
        for w, *vals in zip(tri["weights"], *acc.values()):
            tri_rows.append({"align": method, "l0": w[0], "l1": w[1], "l2": w[2],
                             **dict(zip(acc, vals))})
        panels[method] = {"weights": tri["weights"], **acc}
        if sc.models == 3:
            panels[method].update(soup_clean_acc=s["clean_acc"][0], soup_robust_acc=s["robust_acc"][0])
        for i in range(sc.models):  # vertex i of the soup's simplex, measured as every point
            w = np.zeros((1, sc.models))
            w[0, i] = 1.0
            v = accuracy_rows(evaluate_mixtures(aligned, w, point, progress=False))
            soup_rows.append({"align": method, "model": names[i], **{k: x[0] for k, x in v.items()},
                              "trained_clean_acc": metrics[i].get("clean_acc"),
                              "trained_robust_acc": metrics[i].get("robust_acc")})
        soup_rows.append({"align": method, "model": "soup", **{k: x[0] for k, x in s.items()}})

        def line(i, j, aligned=aligned, base=base, method=method, point=point):
            lspec = {**base, "what": "line", "pair": [i, j], "grid": sc.grid}
            return cached(folder / f"line-{config_hash(lspec)}.npz", lspec,
                          lambda: evaluate_mixtures(aligned, line_weights(sc.models, i, j, sc.grid),
                                                    point, progress=progress,
                                                    desc=f"line {method} {i}-{j}"),
                          f"line {method} {i}-{j}")

        records += pair_lines(aligned, sc.grid, point, method, compute=line)
    frames = {"soup": pd.DataFrame(soup_rows), "triangle": pd.DataFrame(tri_rows),
              "barrier": barrier_table(records, names, bootstrap=sc.bootstrap)}
    _write(sc, run_dir, frames, panels, names, reports, command, time.perf_counter() - t0)
    return frames


def _write(sc, run_dir, frames, panels, names, reports, command, seconds) -> None:
    from robustpath.soup.ternary import plot_barrier_matrix, plot_triangles

    for name, file in (("soup", "soup.csv"), ("triangle", "triangle.csv"),
                       ("barrier", "barrier_matrix.csv")):
        atomic_write_text(run_dir / file, frames[name].to_csv(index=False, float_format="%.6f"))
    atomic_write_json(run_dir / "merge.json", reports)
    atomic_write_json(run_dir / "config.json", asdict(sc))
    if command:
        atomic_write_text(run_dir / "command.txt", command + "\n")
    plot_triangles(panels, names[:3], sc.grid, run_dir / "triangle")  # one scale: compare
    plot_triangles(panels, names[:3], sc.grid, run_dir / "triangle", shared=False)
    plot_barrier_matrix(frames["barrier"], names, run_dir / "barrier_matrix")
    text = summary(sc, frames, reports, seconds)
    atomic_write_text(run_dir / "summary.md", text)
    print(text)


def summary(sc: SoupConfig, frames: dict, reports: dict, seconds: float) -> str:
    """Markdown: the soup vs the endpoints, the triangle's extremes, the barriers."""
    pct = (lambda v: "-" if v is None or v != v else f"{100 * v:.1f}")
    how = {"bn-reset": "every network's BatchNorm re-estimated as at a path point",
           "repair": "every mixed network REPAIRed (clean statistics)",
           "repair-adv": "every mixed network REPAIRed (statistics on PGD inputs)",
           "none": "mixed networks keep their mixed BatchNorm statistics"}[sc.renorm]
    out = [f"# Robust soup of {sc.models} models ({sc.preset} preset, align {sc.align}, "
           f"grid 1/{sc.grid}, renorm {sc.renorm})", "",
           f"Accuracies (%) on the test subset; {how}. `trained` = the endpoint as trained "
           "(its own statistics). Alignment: `weight` = Git Re-Basin's MergeMany (Ainsworth "
           "et al. 2023, Alg. 3), `activation` = each model matched onto seed0 (Tatro et al. "
           "2020), `none` = as trained.", "",
           "| align | model | clean | robust | trained clean | trained robust |",
           "|---|---|---|---|---|---|"]
    for _, r in frames["soup"].iterrows():
        out.append(f"| {r['align']} | {r['model']} | {pct(r['clean_acc'])} | "
                   f"{pct(r['robust_acc'])} | {pct(r.get('trained_clean_acc'))} | "
                   f"{pct(r.get('trained_robust_acc'))} |")
    out += ["", "Triangle of seed0, seed1, seed2 (robust accuracy, %):", "",
            "| align | min | at (l0, l1, l2) | centroid-nearest | max |", "|---|---|---|---|---|"]
    for method, part in frames["triangle"].groupby("align", sort=False):
        lo = part.loc[part["robust_acc"].idxmin()]
        mid = part.loc[((part[["l0", "l1", "l2"]] - 1 / 3) ** 2).sum(1).idxmin()]
        out.append(f"| {method} | {pct(lo['robust_acc'])} | ({lo['l0']:.3f}, {lo['l1']:.3f}, "
                   f"{lo['l2']:.3f}) | {pct(mid['robust_acc'])} | {pct(part['robust_acc'].max())} |")
    out += ["", "Pairwise lines (robust accuracy barrier and minimum, %, 95% bootstrap CI):", "",
            "| align | pair | robust acc. barrier | robust acc. min | robust loss barrier |",
            "|---|---|---|---|---|"]
    for _, r in frames["barrier"].iterrows():
        ci = (lambda k, r=r: f"{pct(r[k])} [{pct(r[k + '_lo'])}, {pct(r[k + '_hi'])}]")
        out.append(f"| {r['align']} | {r['model_a']}-{r['model_b']} | {ci('robust_acc_barrier')} "
                   f"| {ci('robust_acc_min')} | {r['robust_loss_barrier']:.3f} |")
    out += ["", "Spread of the models around their mean, sum_i ||θ_i - θ̄||² / N, before -> "
            "after alignment:", ""]
    for m, r in reports.items():
        sweeps = f" ({r['sweeps']} MergeMany sweeps)" if m == "weight" else ""
        out.append(f"- {m}: {r['spread'][0]:.1f} -> {r['spread'][-1]:.1f}{sweeps}")
    out += ["", f"Wall time of this invocation {seconds:.0f} s (cached results are reloaded, "
            "not recomputed)."]
    return "\n".join(out) + "\n"


@cli_main
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parse_with_config(parser(), argv,
                                   lambda n: FLAGS.get(n, "--" + n.replace("_", "-")))
    if rest:
        raise UserError(f"--config: keys no soup flag sets: {', '.join(sorted(rest))}")
    sc = config_from_args(args)
    if args.print_config:
        print(json.dumps(asdict(sc), indent=2))
        return 0
    if resolve(sc.device).type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    command = "python -m robustpath.soup " + shlex.join(argv)
    run(sc, progress=not args.no_progress, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
