"""``python -m robustpath.soup``: N >= 3 robust endpoints merged into one basin.

Takes N endpoints from the engine's endpoint sources, as the bench does: seeds
(``--models N``: seeds 0..N-1, or ``--seeds``; trained with the bench's recipe and cache)
or your checkpoints (``--endpoints A,B,C``, ``--arch`` as in the bench); aligns them
(``--align weight``: Git Re-Basin's MergeMany; ``activation``: onto model 0; ``none``),
and measures, for the aligned and the unaligned models, the uniform soup, the triangle
of models 0, 1, 2 on a barycentric grid and the line between every pair (barrier
matrix). The run is a plan of engine nodes (:mod:`robustpath.soup.nodes`), cached in
``<out>/ckpt/`` (a killed run resumes, per point) and run by the engine's executors
(``--workers``); outputs: ``soup.csv``, ``triangle.csv``, ``barrier_matrix.csv``,
``triangle.png`` (one colour scale for all methods; ``triangle_<method>.png`` each on
its own), ``barrier_matrix.png``, ``merge.json``, ``summary.md``.

Example: ``python -m robustpath.soup --models 3 --align weight --grid 8 --out runs/soup``.

For N RobustBench models the pairwise barrier matrix is ``python -m robustpath.zoo
compare`` (pairwise alignment, no common basin, no soup).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from robustpath import runtime
from robustpath.cli import (
    ArgumentParser,
    add_run_options,
    add_threat_flags,
    data_root,
    parse_with_config,
    split_list,
)
from robustpath.config import flag_of, from_preset
from robustpath.device import resolve
from robustpath.engine import stages
from robustpath.errors import UserError, cli_main
from robustpath.io import store
from robustpath.io.lock import run_lock
from robustpath.io.store import atomic_write_json, atomic_write_text
from robustpath.numbers import parse_int_list
from robustpath.soup.config import SoupConfig
from robustpath.soup.merge import MERGERS
from robustpath.soup.triangle import accuracy_rows, barrier_table, line_record


def parser() -> argparse.ArgumentParser:
    from robustpath.bench import preset_default
    from robustpath.config import PRESETS

    p = ArgumentParser(prog="python -m robustpath.soup", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--models", type=int, default=None, help="number of endpoints, at least 3: seeds "
      "0..N-1 unless --seeds or --endpoints name them (default 3)")
    a("--seeds", default=None, help="endpoint seeds, comma-separated, at least 3 (trained "
      "with the bench's recipe and cache; default 0..N-1)")
    a("--endpoints", default=None, metavar="A,B,C",
      help="endpoint files instead of trained seeds, at least 3, as in python -m "
      "robustpath.bench: robustpath.train checkpoints, or with --arch pkg.module:Factory "
      ".pt / .safetensors state dicts (read with weights_only=True, never a pickle)")
    a("--align", default="weight", help=f"merge method: {', '.join(MERGERS.names())} (weight: "
      "MergeMany; activation: onto model 0), or several comma-separated; the unaligned "
      "models (none) are always measured too")
    a("--grid", type=int, default=8, help="barycentric step 1/K of the triangle of models 0, 1, 2 "
      "((K+1)(K+2)/2 points) and t step of every pair's line")
    a("--preset", default="quick", help=f"settings bundle: {', '.join(PRESETS.names())}")
    a("--dataset", default=None, help=f"dataset ({preset_default('dataset')})")
    a("--data-root", default=None, type=data_root,
      help="an existing folder with dataset files (default ./data)")
    a("--arch", default=None, help="architecture, or with --endpoints your own as "
      f"pkg.module:Factory ({preset_default('arch')})")
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
    a("--workers", type=int, default=None, help="processes running independent stages at "
      "once, one torch thread each (default: $ROBUSTPATH_WORKERS or the usable cores; 1 on "
      "a GPU; 1: serial in process); results are the same for any value")
    a("--no-progress", action="store_true", help="hide progress bars")
    add_run_options(p)
    return p


def config_from_args(args) -> SoupConfig:
    """The flags as a validated :class:`SoupConfig` (the preset's values where unset)."""
    endpoints = split_list(args.endpoints) if args.endpoints else None
    seeds = parse_int_list(args.seeds, name="--seeds") if args.seeds else None
    if endpoints and seeds:
        raise UserError("--seeds and --endpoints exclude each other (the endpoints come "
                        "from the files)")
    if seeds is None and not endpoints:
        seeds = list(range(3 if args.models is None else args.models))
    n = len(endpoints or seeds)
    if args.models is not None and args.models != n:
        raise UserError(f"--models {args.models} but {n} endpoints "
                        f"({'--endpoints' if endpoints else '--seeds'})")
    found = {}
    if endpoints:  # robustpath.train checkpoints name their architecture, dataset and width
        from robustpath.bench import file_settings

        found = file_settings(endpoints, args.arch)
    return from_preset(
        args.preset, cls=SoupConfig, models=n, seeds=seeds, endpoints=endpoints,
        dataset=args.dataset or found.get("dataset"), arch=args.arch or found.get("arch"),
        width=args.width if args.width is not None else found.get("width"),
        align=split_list(args.align), grid=args.grid, merge_seed=args.merge_seed,
        norm=args.norm, eps=args.eps, step_size=args.step_size, eval_steps=args.steps,
        train_steps=args.train_steps, endpoint_epochs=args.epochs,
        train_subset=args.train_subset, test_subset=args.test_subset,
        bn_inputs=args.bn_inputs, bn_batches=args.bn_batches, align_inputs=args.align_inputs,
        renorm=args.renorm, bootstrap=args.bootstrap, plane_grid=0, data_root=args.data_root,
        device=args.device, out=args.out)


def parse(argv: list[str]) -> tuple[argparse.Namespace, SoupConfig]:
    """``argv`` -> the flags and the resolved configuration (``--config FILE`` first, the
    typed flags over it; a file's fields that no soup flag sets, e.g. ``lr``, as the
    bench takes them)."""
    args, rest = parse_with_config(parser(), argv, flag_of)
    sc = config_from_args(args)
    if rest:
        unknown = set(rest) - set(SoupConfig.__dataclass_fields__)
        if unknown:
            raise UserError(f"--config: keys no soup flag sets: {', '.join(sorted(unknown))}")
        sc = replace(sc, **rest).validate()
    return args, sc


def _names(sc: SoupConfig, refs: list) -> list[str]:
    """``seed<s>`` for trained endpoints, the file's stem for a user's file."""
    if sc.endpoints:
        from robustpath.engine.endpoint_files import endpoint_id

        return [endpoint_id(r) for r in refs]
    return [f"seed{s}" for s in refs]


def run(sc: SoupConfig, *, progress: bool = True, command: str | None = None,
        workers: int | None = None) -> dict:
    """Every stage of a soup run, executed by the engine (``workers`` processes; default
    as the bench's); returns the frames written (``soup``, ``triangle``, ``barrier``)."""
    from robustpath.engine import nodes
    from robustpath.engine.executors import default_workers
    from robustpath.engine.run import execute
    from robustpath.soup.nodes import build_plan

    device = resolve(sc.device)
    if workers is None:  # one GPU is shared by nothing: its run stays in one process
        workers = default_workers() if device.type == "cpu" else 1
    if int(workers) < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    run_dir = Path(sc.out)
    old = store.read_json(run_dir / "config.json")
    if old is not None and not {"models", "grid", "merge_seed"} <= set(old):
        # a bench or zoo run: soup's config.json, command.txt, summary.md would replace its own
        raise UserError(f"{run_dir} holds another kind of run (its config.json is not a soup's); "
                        "use another --out")
    data = stages.RunData.load(sc)
    if sc.endpoints:  # a file holding a pickle is refused before anything is written
        from robustpath.engine.endpoint_files import precheck

        precheck(sc.endpoints, sc.arch)
    store.check_writable(run_dir)
    t0 = time.perf_counter()
    with run_lock(run_dir):
        with runtime.use(runtime.Runtime.of(sc, progress=progress, workers=int(workers))):
            nodes.keep_data(sc, data)  # in process: the data loaded above
            plan, sp = build_plan(sc, run_dir.name)
            results = execute(plan, run_dir, workers=int(workers), progress=progress,
                              threads=1 if device.type == "cpu" else None)
            frames, panels, names, reports = assemble(sc, sp, results)
            _write(sc, run_dir, frames, panels, names, reports, command,
                   time.perf_counter() - t0)
    return frames


def assemble(sc: SoupConfig, sp, results: dict[str, dict]):
    """The run's tables from its nodes' results: ``(frames, panels, names, reports)``."""
    names = _names(sc, sp.refs)
    metrics = [results[n]["metrics"] for n in sp.endpoints]
    soup_rows, tri_rows, records, panels, reports = [], [], [], {}, {}
    for method in sc.methods():
        reports[method] = results[sp.merges[method]]["report"]
        s = accuracy_rows(results[sp.soups[method]]["soup"])
        tri = results[sp.triangles[method]]["triangle"]
        acc = accuracy_rows(tri)
        for w, *vals in zip(tri["weights"], *acc.values()):
            tri_rows.append({"align": method, "l0": w[0], "l1": w[1], "l2": w[2],
                             **dict(zip(acc, vals))})
        panels[method] = {"weights": tri["weights"], **acc}
        if sc.models == 3:
            panels[method].update(soup_clean_acc=s["clean_acc"][0], soup_robust_acc=s["robust_acc"][0])
        for i, vertex in enumerate(results[sp.soups[method]]["vertices"]):
            v = accuracy_rows(vertex)
            soup_rows.append({"align": method, "model": names[i], **{k: x[0] for k, x in v.items()},
                              "trained_clean_acc": metrics[i].get("clean_acc"),
                              "trained_robust_acc": metrics[i].get("robust_acc")})
        soup_rows.append({"align": method, "model": "soup", **{k: x[0] for k, x in s.items()}})
        records += [line_record(method, i, j, sc.grid, results[n]["line"])
                    for (i, j), n in sp.lines[method].items()]
    frames = {"soup": pd.DataFrame(soup_rows), "triangle": pd.DataFrame(tri_rows),
              "barrier": barrier_table(records, names, bootstrap=sc.bootstrap)}
    return frames, panels, names, reports


def _write(sc, run_dir, frames, panels, names, reports, command, seconds) -> None:
    from robustpath.soup.ternary import plot_barrier_matrix, plot_triangles

    for name, file in (("soup", "soup.csv"), ("triangle", "triangle.csv"),
                       ("barrier", "barrier_matrix.csv")):
        atomic_write_text(run_dir / file, frames[name].to_csv(index=False, float_format="%.6f"))
    atomic_write_json(run_dir / "merge.json", reports)
    atomic_write_json(run_dir / "config.json", sc.to_dict())
    if command:
        atomic_write_text(run_dir / "command.txt", command + "\n")
    plot_triangles(panels, names[:3], sc.grid, run_dir / "triangle")  # one scale: compare
    plot_triangles(panels, names[:3], sc.grid, run_dir / "triangle", shared=False)
    plot_barrier_matrix(frames["barrier"], names, run_dir / "barrier_matrix")
    text = summary(sc, frames, reports, seconds, names)
    atomic_write_text(run_dir / "summary.md", text)
    print(text)


def summary(sc: SoupConfig, frames: dict, reports: dict, seconds: float,
            names: list[str]) -> str:
    """Markdown: the soup vs the endpoints, the triangle's extremes, the barriers."""
    pct = (lambda v: "-" if v is None or v != v else f"{100 * v:.1f}")
    how = {"bn-reset": "every network's BatchNorm re-estimated as at a path point",
           "repair": "every mixed network REPAIRed (clean statistics)",
           "repair-adv": "every mixed network REPAIRed (statistics on PGD inputs)",
           "none": "mixed networks keep their mixed BatchNorm statistics"}[sc.renorm]
    out = [f"# Robust soup of {sc.models} models ({sc.preset} preset, align {','.join(sc.align)}, "
           f"grid 1/{sc.grid}, renorm {sc.renorm})", "",
           f"Accuracies (%) on the test subset; {how}. `trained` = the endpoint as trained "
           "(its own statistics). Alignment: `weight` = Git Re-Basin's MergeMany (Ainsworth "
           f"et al. 2023, Alg. 3), `activation` = each model matched onto {names[0]} (Tatro et al. "
           "2020), `none` = as trained.", "",
           "| align | model | clean | robust | trained clean | trained robust |",
           "|---|---|---|---|---|---|"]
    for _, r in frames["soup"].iterrows():
        out.append(f"| {r['align']} | {r['model']} | {pct(r['clean_acc'])} | "
                   f"{pct(r['robust_acc'])} | {pct(r.get('trained_clean_acc'))} | "
                   f"{pct(r.get('trained_robust_acc'))} |")
    out += ["", f"Triangle of {', '.join(names[:3])} (robust accuracy, %):", "",
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
    args, sc = parse(argv)
    if args.print_config:
        print(json.dumps(sc.to_dict(), indent=2))
        return 0
    command = "python -m robustpath.soup " + shlex.join(argv)
    run(sc, progress=not args.no_progress, command=command, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
