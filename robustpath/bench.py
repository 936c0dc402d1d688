"""``python -m robustpath.bench``: the whole robust-loss-barrier benchmark.

Trains (or reuses) adversarially robust endpoint pairs, aligns them, fits the
curves with PGD in the loop, evaluates clean and robust accuracy and loss along
every path on a t grid, and writes records, barrier tables and plots to the run
folder (default ``runs/<dataset>-<arch>-<preset>``, git-ignored; the committed
``results/`` runs are made with an explicit ``--out results/...``). Every stage is cached by a
hash of its configuration: a second identical run does no training, a killed run
resumes where it stopped.

Example: ``python -m robustpath.bench --attack pgd --eps 8/255``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import MISSING, dataclass, replace
from pathlib import Path

from robustpath import runtime
from robustpath.attacks.base import ATTACKS
from robustpath.cli import (
    ArgumentParser,
    add_field_flags,
    add_run_options,
    add_threat_flags,
    data_root,
    parse_with_config,
    split_list,
)
from robustpath.config import ALIGN_METHODS, FIELD_HELP, PRESETS, BenchConfig, flag_of, from_preset
from robustpath.device import resolve
from robustpath.engine import stages
from robustpath.engine.timing import StageTimer
from robustpath.errors import UserError, cli_main
from robustpath.io import runfolder, store
from robustpath.io.lock import run_lock
from robustpath.io.outputs import comparable, config_changes, write_run
from robustpath.numbers import parse_int_list
from robustpath.report.run import format_summary


def parser() -> argparse.ArgumentParser:
    from robustpath.data import DATASETS
    from robustpath.models import available
    from robustpath.paths.curves import CURVES

    p = ArgumentParser(prog="python -m robustpath.bench", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--preset", default="quick", help=f"settings bundle: {', '.join(PRESETS.names())} "
      "(quick: three seed pairs on CPU, about 20 min from scratch with one torch thread, 10 "
      "with --seeds 0,1; paper: Tatro et al.'s robust setting, for a GPU; paper-fmnist: "
      "theirs scaled down to Fashion-MNIST, one pair, about 50 min on CPU)")
    a("--dataset", default=None, help=f"dataset: {', '.join(DATASETS.names())} "
      f"({preset_default('dataset')})")
    a("--data-root", default=None, type=data_root, help="an existing folder with dataset files (default ./data; "
      "Fashion-MNIST is also read from /usr/share/datasets/fashion-mnist)")
    a("--arch", default=None, help=f"architecture: {', '.join(available())}, or with "
      f"--endpoints your own as pkg.module:Factory ({preset_default('arch')})")
    a("--width", type=float, default=None,
      help=f"width multiplier of the architecture ({preset_default('width')})")
    a("--seeds", default=None, help="endpoint seeds, paired consecutively: 0,1,2,3 -> (0,1),(2,3) "
      "(default: the preset's: quick and paper 0-5 = three pairs, others 0,1)")
    a("--endpoints", default=None, metavar="A,B",
      help="two endpoint files instead of trained seeds (one pair; records name them by file "
      "stem; t = 0 and 1 keep their own BatchNorm statistics): checkpoints written by python "
      "-m robustpath.train (architecture from their .json), or with --arch pkg.module:Factory "
      "(your class or function, called with no arguments or num_classes=) .pt / .safetensors "
      "state dicts; .pt is read with torch.load(weights_only=True), never running a pickle")
    a("--align", default="none,activation",
      help=f"alignment methods, comma-separated: {', '.join(ALIGN_METHODS)} (pam-*: "
      "robustpath's robust PAM; tatro-none, tatro-activation: Tatro et al.'s PAM with their "
      "clean objective; tatro-robust-*: the same with PGD in the loop; *-none / *-activation: "
      "started from the identity / from activation matching)")
    a("--align-inputs", default="clean", help="activation matching on clean or adv inputs")
    a("--align-samples", type=int, default=None,
      help="activation matching on the first N training examples (Tatro et al.: 10,000; "
      f"{preset_default('align_samples')})")
    a("--paths", default="line,bezier", help=f"path families: {', '.join(CURVES.names())}")
    a("--bends", type=int, default=None, help="control points of bezier/polychain (default 1)")
    a("--attack", default="pgd", help=f"evaluation attack: {', '.join(ATTACKS.names())}")
    add_threat_flags(p)
    a("--steps", type=int, default=None, help=f"attack steps in evaluation ({preset_default('eval_steps')})")
    a("--train-steps", type=int, default=None, help=f"PGD steps in endpoint and curve training ({preset_default('train_steps')})")
    a("--restarts", type=int, default=None, help=f"attack restarts in evaluation ({preset_default('restarts')})")
    a("--epochs", type=int, default=None, help=f"endpoint training epochs ({preset_default('endpoint_epochs')})")
    a("--curve-epochs", type=int, default=None, help=f"curve training epochs ({preset_default('curve_epochs')})")
    a("--schedule", default=None, help="endpoint lr schedule: onecycle, cosine, garipov "
      f"({preset_default('schedule')})")
    a("--curve-schedule", default=None, help=f"curve lr schedule: cosine, garipov, constant ({preset_default('curve_schedule')})")
    a("--attack-mode", default=None, help="endpoint training's attacks with the model in eval "
      f"or train mode (Tatro et al.: train; {preset_default('attack_mode')})")
    a("--affine-degrees", type=float, default=None,
      help="endpoint and curve training: random rotation in [-d, d] degrees "
      f"({preset_default('affine_degrees')})")
    a("--train-subset", type=int, default=None, help=f"training examples (0 = all; {preset_default('train_subset')})")
    a("--test-subset", type=int, default=None, help=f"test examples (0 = all; {preset_default('test_subset')})")
    a("--t-points", type=int, default=None, help=f"evenly spaced t in [0,1] ({preset_default('t_points')})")
    a("--batch-size", type=int, default=None, help="batch size of every pass over training data: endpoint, curve and PAM training, "
      f"BN recomputation ({preset_default('batch_size')})")
    a("--bn-inputs", default=None, help=f"BN recomputed at each t on clean or adv inputs ({preset_default('bn_inputs')})")
    a("--bn-batches", type=int, default=None, help="training batches (of 128) for BN recomputation at each t "
      f"({preset_default('bn_batches')}; paper's 391 = the whole CIFAR-10 training set; "
      "see studies/results/bn_study.md)")
    a("--renorm", default=None, help="how each point of a path is renormalised: bn-reset "
      "(BatchNorm statistics re-estimated, per --bn-inputs), repair (REPAIR, Jordan et al. "
      "2022: every unit's mean/std set to the interpolation of the endpoints' on the "
      "--bn-batches training batches; also for networks without BatchNorm), repair-adv "
      "(REPAIR on PGD inputs against each network), none (interpolated statistics as they "
      "are); path evaluation, strong and curvature stages; loss planes always re-estimate "
      "BatchNorm (default bn-reset)")
    a("--bootstrap", type=int, default=None, help=f"bootstrap resamples for the 95%% CIs ({preset_default('bootstrap')})")
    a("--plane-grid", type=int, default=None,
      help="loss surface on each bezier curve's plane (first seed pair) on an N x N grid "
      f"(0 = off; {preset_default('plane_grid')})")
    a("--curvature", type=int, default=None, metavar="N",
      help="input curvature along every path (Zhao et al. 2020): top eigenvalue of the input "
      "Hessian of the loss at each grid t on the first N test examples, with its CI and its "
      "Pearson r with the robust loss; writes curvature.{csv,md}, plots/curvature_*.png "
      "(0 = off; default 0)")
    a("--curvature-iters", type=int, default=None,
      help="power iterations per example for --curvature, at most (a batch stops once converged; default 20)")
    a("--t-batch", type=int, default=None,
      help="t points evaluated at once by vmap over stacked parameters (same results; "
      "pays on a GPU with small models, slower on CPU; default 1)")
    a("--pam-iters", type=int, default=None,
      help="outer iterations of PAM (alignments pam-* and tatro-*; each: permutation step "
      "(pam-*: 40 batches; tatro-*: 1 epoch, lr scaled to Tatro et al.'s budget) + 1 curve "
      "epoch; default 2)")
    a("--refine-rounds", type=int, default=None,
      help="bisection rounds around each path's lowest robust accuracy after the grid "
      "(2 extra t per round; 0 = off; default 2)")
    a("--strong-examples", type=int, default=None,
      help="test examples (a seeded subset) attacked by the strong stage at both endpoints "
      "and each path's worst t: standard AutoAttack and many-restart PGD "
      f"({preset_default('strong_examples')})")
    a("--aa-version", default=None, help="AutoAttack version of the strong stage and of "
      "--attack autoattack: standard (Croce & Hein's standard version), plus, rand, custom "
      "(default standard)")
    a("--aa-attacks", default=None, help="with --aa-version custom: comma-separated "
      "sub-attacks from apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square")
    a("--strong-pgd-steps", type=int, default=None,
      help="steps of the strong stage's many-restart PGD (default 50; step 2.5 eps/steps; "
           "accuracy-only: an example is no longer attacked once broken)")
    a("--strong-pgd-restarts", type=int, default=None,
      help="restarts of the strong stage's many-restart PGD (default 10)")
    a("--strong-at", default=None,
      help="points the strong stage attacks: ends-worst (t = 0, 1 and PGD's worst t; the "
      "AA barrier is then a lower bound) or grid (every grid t as well: the AA barrier is "
      "a maximum over the path; T - 2 more points per path) (default ends-worst)")
    a("--no-strong", action="store_true", help="skip the strong stage")
    a("--no-amp", action="store_true",
      help="train in float32 on CUDA too (default: bfloat16 autocast for endpoint and curve "
      "training on CUDA; CPU and all evaluation always run in float32)")
    a("--no-fuse", action="store_true",
      help="run every network as it is, without robustpath.models.fuse's function-preserving "
      "rewrite (folded BatchNorm, ReLU after pooling, NHWC on CPU): slower, but "
      "bit-identical to runs made before the rewrite existed")
    a("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    a("--out", default=None, help="run folder (default runs/<dataset>-<arch>-<preset>, or "
      "runs/<dataset>-<A>__<B> with --endpoints; runs/ is git-ignored: the committed results/ "
      "folders are regenerated with an explicit --out results/...)")
    a("--overwrite", action="store_true",
      help="allow --out to hold a run with a different configuration (its records are replaced)")
    a("--no-progress", action="store_true", help="hide progress bars (the stage log stays)")
    a("--workers", type=int, default=None, help="processes running independent stages at "
      "once, one torch thread each (default: $ROBUSTPATH_WORKERS or the usable cores; 1 "
      "on a GPU; 1: serial in process); "
      "results are the same for any value")
    a("--tensorboard", action="store_true", help="also log the run's metrics to TensorBoard "
      "events in <out>/tensorboard/ (needs the tensorboard package; the CSVs stay the source)")
    a("--wandb-offline", action="store_true",
      help="also log them to an offline Weights & Biases run in <out>/wandb/ (needs wandb)")
    # every other field of the configuration (lr, curve_lr, strong_t, ...; a field added
    # later) gets its flag from the dataclass
    add_field_flags(p, BenchConfig, flag_of, FIELD_HELP, default_text=preset_default)
    add_run_options(p)
    return p


def file_defaults(values: dict) -> dict:
    """What a bench run resolves for fields left out, for the preset in ``values``."""
    from dataclasses import fields

    base = {f.name: f.default for f in fields(BenchConfig) if f.default is not MISSING}
    base.update({f.name: f.default_factory() for f in fields(BenchConfig)
                 if f.default_factory is not MISSING})
    preset = values.get("preset", "quick")
    return {**base, **(PRESETS.get(preset) if preset in PRESETS else {})}


def parse(argv: list[str]) -> tuple[argparse.Namespace, BenchConfig]:
    """``argv`` -> the parsed flags and the resolved, validated configuration
    (``--config FILE`` first, the typed flags over it)."""
    args, rest = parse_with_config(parser(), argv, flag_of, defaults=file_defaults)
    cfg = config_from_args(args)
    if rest:  # fields of the file that no bench flag sets (e.g. lr, batch_size)
        unknown = set(rest) - set(BenchConfig.__dataclass_fields__)
        if unknown:
            raise UserError(f"--config: unknown config keys: {', '.join(sorted(unknown))}")
        cfg = replace(cfg, **rest).validate()
    return args, cfg


def preset_default(key: str) -> str:
    """What a flag left out becomes: ``"default per preset: paper 0, quick 5"``, or
    ``"default: 1.0"`` where every preset agrees."""
    from dataclasses import fields

    base = {f.name: f.default for f in fields(BenchConfig)}
    vals = {n: PRESETS.get(n).get(key, base.get(key)) for n in PRESETS.names()}
    if len(set(map(str, vals.values()))) == 1:
        return f"default: {next(iter(vals.values()))}"
    return "default per preset: " + ", ".join(f"{n} {v}" for n, v in vals.items())


def config_from_args(args) -> BenchConfig:
    endpoints = split_list(args.endpoints) if args.endpoints else None
    # robustpath.train.loop checkpoints name their architecture, dataset and width
    found = file_settings(endpoints, args.arch) if endpoints else {}
    given = dict(
        dataset=args.dataset or found.get("dataset"),
        arch=args.arch or found.get("arch"),
        width=args.width if args.width is not None else found.get("width"),
        endpoints=endpoints,
        seeds=parse_int_list(args.seeds, name="--seeds") if args.seeds else None,
        align=split_list(args.align), schedule=args.schedule, curve_schedule=args.curve_schedule,
        attack_mode=args.attack_mode, affine_degrees=args.affine_degrees,
        align_inputs=args.align_inputs, align_samples=args.align_samples,
        paths=split_list(args.paths), bends=args.bends,
        attack=args.attack, norm=args.norm, eps=args.eps, step_size=args.step_size,
        eval_steps=args.steps, train_steps=args.train_steps, restarts=args.restarts,
        endpoint_epochs=args.epochs, curve_epochs=args.curve_epochs,
        train_subset=args.train_subset, test_subset=args.test_subset, t_points=args.t_points,
        bn_inputs=args.bn_inputs, bn_batches=args.bn_batches, bootstrap=args.bootstrap,
        batch_size=args.batch_size,
        renorm=args.renorm,
        plane_grid=args.plane_grid, pam_iters=args.pam_iters, t_batch=args.t_batch,
        curvature_examples=args.curvature, curvature_iters=args.curvature_iters,
        refine_rounds=args.refine_rounds, strong=False if args.no_strong else None,
        strong_examples=args.strong_examples, aa_version=args.aa_version,
        aa_attacks=split_list(args.aa_attacks) if args.aa_attacks else None,
        strong_pgd_steps=args.strong_pgd_steps, strong_pgd_restarts=args.strong_pgd_restarts,
        strong_at=args.strong_at,
        amp=False if args.no_amp else None, fuse=False if args.no_fuse else None,
        data_root=args.data_root, device=args.device)
    # the flags derived from fields (robustpath.cli.add_field_flags) carry the field's name
    given.update({f: v for f, v in vars(args).items()
                  if f in BenchConfig.__dataclass_fields__ and v is not None
                  and f not in given and f not in ("preset", "out")})
    cfg = from_preset(args.preset, **given)
    # a setting of a stage that does not run would be ignored without a word (issue 17)
    if args.curvature_iters is not None and not cfg.curvature_examples:
        raise UserError("--curvature-iters needs --curvature N (N > 0)")
    off = [f for f, v in (("--strong-examples", args.strong_examples), ("--strong-pgd-steps",
           args.strong_pgd_steps), ("--strong-pgd-restarts", args.strong_pgd_restarts),
           ("--strong-at", args.strong_at))
           if v is not None]
    if off and not cfg.strong:
        raise UserError(f"{off[0]} needs the strong stage (drop --no-strong)")
    cfg.out = args.out or default_out(cfg)
    return cfg


def default_out(cfg: BenchConfig) -> str:
    """Where a run goes without ``--out``: ``runs/<dataset>-<arch>-<preset>`` (git-ignored;
    the committed ``results/`` folders are regenerated with an explicit ``--out``); with
    ``--endpoints``, ``runs/<dataset>-<stem A>__<stem B>``."""
    if cfg.endpoints:
        from robustpath.engine.endpoint_files import endpoint_id

        return f"runs/{cfg.dataset}-{'__'.join(endpoint_id(p) for p in cfg.endpoints)}"
    return f"runs/{cfg.dataset}-{cfg.arch}-{cfg.preset}"


def file_settings(endpoints: list[str], arch: str | None) -> dict:
    """``--endpoints`` without ``--arch``: the architecture, dataset and width their
    ``robustpath.train.loop`` sidecars name (a state dict without one needs ``--arch``)."""
    from robustpath.engine.endpoint_files import import_factory, is_factory, sidecar_settings

    if arch is not None and is_factory(arch):
        import_factory(arch)  # an import error or a missing name, before any work
        return {}
    found = sidecar_settings(endpoints)
    if not found and arch is None:
        raise UserError(f"--endpoints {','.join(endpoints)}: no robustpath.train.loop sidecar "
                        "(.json) names the architecture; pass --arch pkg.module:Factory")
    return found


def run(cfg: BenchConfig, *, progress: bool = True, overwrite: bool = False,
        command: str | None = None, workers: int | None = None,
        templates: dict | None = None) -> Path:
    """Run every stage of the benchmark for ``cfg``; returns the run folder. ``workers``:
    processes running independent stage nodes at once, each with one torch thread on
    CPU (default: ``$ROBUSTPATH_WORKERS`` or the usable cores on CPU, 1 on a GPU; 1: one
    after the other in this process); the results do not depend on it. ``templates``:
    endpoint file -> in-memory module (``rp.benchmark``), which keeps the run in process."""
    from robustpath.engine.executors import default_workers

    if templates:
        workers = 1  # modules in memory do not travel to worker processes
    device = resolve(cfg.device)
    if workers is None:  # one GPU is shared by nothing: its run stays in one process
        workers = default_workers() if device.type == "cpu" else 1
    if int(workers) < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    workers = int(workers)
    start = time.perf_counter()
    run_dir = Path(cfg.out)
    data = stages.RunData.load(cfg)  # missing data fails before anything is written
    from robustpath.paths.curvature import check_examples

    check_examples(cfg, len(data.x_test))  # --curvature N > the test examples: before training
    from robustpath.paths.repair import plane_note

    if note := plane_note(cfg):  # loss planes ignore --renorm: say so before work
        print(note, file=sys.stderr)
    if cfg.strong and cfg.strong_examples > len(data.x_test):  # all are attacked: say so
        print(f"note: the strong stage attacks all {len(data.x_test)} test examples "
              f"(--strong-examples {cfg.strong_examples} is more)", file=sys.stderr)
    if cfg.endpoints:  # a file holding a pickle is refused before anything is written
        from robustpath.engine.endpoint_files import precheck

        precheck(cfg.endpoints, cfg.arch)
    store.check_writable(run_dir)
    # one writer per run folder: a second run into it fails here, naming the holder
    with run_lock(run_dir):
        runfolder.recover(run_dir)  # finish or discard a commit a kill interrupted
        old = store.read_json(run_dir / "config.json")
        if old and comparable(old) != comparable(cfg.to_dict()) and not overwrite:
            raise UserError(f"{run_dir} holds a run with a different configuration "
                            f"({config_changes(old, cfg.to_dict())}); use another --out or pass "
                            "--overwrite")
        from robustpath.engine.sources import FileSource

        FileSource.templates = dict(templates or {})
        try:
            with runtime.use(runtime.Runtime.of(cfg, progress=progress, workers=workers)):
                return _run_stages(cfg, run_dir, data, device, start, progress, command,
                                   workers)
        finally:
            FileSource.templates = {}


def _run_stages(cfg: BenchConfig, run_dir: Path, data, device, start: float, progress: bool,
                command: str | None, workers: int) -> Path:
    """The run's plan (:mod:`robustpath.engine.plan`, one cell) executed by the engine's
    local executor, then the run folder written from the nodes' results."""
    from robustpath.engine import nodes
    from robustpath.engine.assemble import cell_outputs, stage_timings
    from robustpath.engine.plan import build_plan
    from robustpath.engine.run import execute

    nodes.keep_data(cfg, data)  # in process: the data loaded above, not a second copy
    plan = build_plan([_Cell(run_dir.name, cfg)])
    results = execute(plan, run_dir, workers=workers, progress=progress,
                      threads=1 if device.type == "cpu" else None)
    cp = plan.cells[run_dir.name]
    out = cell_outputs(cp, results)
    out.timings = stage_timings(plan, results, time.perf_counter() - start)
    summary = write_run(run_dir, cfg, out, command=command)
    elapsed = time.perf_counter() - start
    print(format_summary(summary, cfg.to_dict()))
    print(f"\nstage timings (s, summed over {workers} worker{'s' if workers != 1 else ''}):\n"
          f"{StageTimer.from_dict(out.timings).table()}")
    print(f"\n{len(out.records)} paths evaluated in {elapsed:.0f} s; outputs in {run_dir}/ "
          f"(report.html, tables/summary.md, plots/, records.csv)")
    return run_dir


@dataclass
class _Cell:
    """The bench's one cell: the run folder's name and its configuration."""

    name: str
    cfg: BenchConfig


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, cfg = parse(argv)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    command = "python -m robustpath.bench " + " ".join(shlex.quote(a) for a in argv)
    if args.tensorboard or args.wandb_offline:  # fail before the run, not after it
        from robustpath.report import tracking

        tracking.check_available(tensorboard=args.tensorboard, wandb=args.wandb_offline)
    run_dir = run(cfg, progress=not args.no_progress, overwrite=args.overwrite,
                  command=command.strip(), workers=args.workers)
    if args.tensorboard:
        print(f"TensorBoard events: {tracking.log_tensorboard(run_dir)}")
    if args.wandb_offline:
        print(f"W&B offline run: {tracking.log_wandb_offline(run_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
