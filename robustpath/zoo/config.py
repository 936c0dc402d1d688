"""``python -m robustpath.zoo compare``: its settings (:class:`CompareConfig`) and flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from robustpath.cli import add_field_flags, add_run_options, data_root, split_list
from robustpath.config import FIELD_HELP, StageConfig, check_path_stages, flag_of
from robustpath.config import MATCH_METHODS as ALIGN_METHODS  # zoo runs one-shot matchers, not PAM
from robustpath.errors import UserError
from robustpath.numbers import parse_fraction
from robustpath.zoo.access import DEFAULT_MODEL_DIR, parse_dataset, parse_expect_sha256

#: the bench's path stages (:class:`robustpath.config.BenchConfig` fields, same names,
#: defaults and flags) that a comparison runs too: loss planes and input curvature
STAGE_FIELDS = ("plane_grid", "curvature_examples", "curvature_iters")


@dataclass
class CompareConfig(StageConfig):
    """Resolved settings of ``python -m robustpath.zoo compare`` (written to config.json):
    the shared groups of :class:`robustpath.config.StageConfig` with the zoo's defaults,
    plus where the models come from.

    ``pairs``: explicit model pairs (default: every same-architecture pair of
    ``models``). Attacks: ``attack`` with ``eval_steps`` (``--steps``) evaluates the paths; PGD with
    ``train_steps`` makes adversarial inputs for BatchNorm recomputation, activation
    matching on ``adv`` inputs and curve fitting; the strong stage (standard AutoAttack and
    many-restart PGD, :mod:`robustpath.strong.stage`) runs at the endpoints, the worst t and
    ``strong_t``. t = 0 and t = 1 are the published models with their own BatchNorm
    statistics unless ``bn_endpoints``. ``eps`` None: RobustBench's budget of the threat
    model (:func:`robustpath.config.default_eps`). ``plane_grid``, ``curvature_examples``
    (``--curvature``), ``curvature_iters``: the bench's plane and curvature stages
    (:data:`STAGE_FIELDS`). A comparison is a plan of the engine
    (:mod:`robustpath.zoo.run`), so every stage the bench has runs here too.
    """

    ALIGN_CHOICES = ALIGN_METHODS  # one-shot matchers; PAM needs trained seeds' recipe

    models: list[str] = field(default_factory=list)
    model_dir: str = DEFAULT_MODEL_DIR
    pairs: list[list[str]] | None = None
    transfer: bool = True
    trust_checkpoints: bool = False
    expect_sha256: dict = field(default_factory=dict)  # model name -> sha256 of its .pt
    # the zoo's defaults for shared settings
    dataset: str = "cifar10"
    align: list[str] = field(default_factory=lambda: ["none", "weight"])
    paths: list[str] = field(default_factory=lambda: ["line"])
    eps: float | None = None
    test_subset: int = 200
    curve_lr: float = 0.015
    bn_endpoints: bool = False   # recompute BN at t = 0, 1 too (default: published statistics)
    strong_examples: int = 200
    # the bench's plane and curvature stages (BenchConfig's fields of these names)
    plane_grid: int = 0
    curvature_examples: int = 0
    curvature_iters: int = 20

    @property
    def threat(self) -> str:
        """RobustBench's threat-model name (``Linf``/``L2``): the model folder's level."""
        return self.threat_model

    def validate(self) -> CompareConfig:
        from robustpath import data as data_mod

        self.dataset = parse_dataset(self.dataset)
        if self.dataset not in data_mod.DATASETS:
            raise UserError(f"compare needs test data robustpath can load; {self.dataset} is not "
                            f"one of {', '.join(data_mod.DATASETS.names())}")
        from pathlib import Path

        if Path(self.model_dir).exists() and not Path(self.model_dir).is_dir():
            raise UserError(f"--model-dir {self.model_dir} is a file, not a folder")
        if len(self.models) < 2 or len(set(self.models)) != len(self.models):
            raise UserError(f"--models needs at least two distinct names, got {self.models}")
        super().validate()
        check_path_stages(self)
        return self


def add_compare_arguments(q: argparse.ArgumentParser) -> None:
    a = q.add_argument
    a("--models", default=None, help="zoo names, comma-separated (at least two; required "
      "unless --config gives them)")
    a("--pairs", default=None, help="explicit pairs A:B,C:D (default: every same-architecture "
      "pair of --models; a pair of different architectures is an error)")
    a("--data-root", default=None, type=data_root, help="an existing folder with cifar-10-batches-py / cifar-100-python "
      "(default ./data or env ROBUSTPATH_DATA)")
    a("--align", default="none,weight",
      help=f"alignment methods, comma-separated: {', '.join(ALIGN_METHODS)}")
    a("--align-inputs", default="clean", help="activation matching on clean or adv inputs")
    a("--align-samples", type=int, default=2000,
      help="training examples for activation matching")
    a("--paths", default="line", help="path families, comma-separated: line, bezier, polychain "
      "(bezier/polychain are fitted with PGD in the loop)")
    a("--bends", type=int, default=1, help="control points of bezier/polychain")
    a("--attack", default="pgd", help="attack evaluated along the paths (see robustpath.attacks.base)")
    a("--eps", default=None, help="attack radius in pixels, e.g. 8/255 (default per dataset: "
      "8/255 for Linf, 0.5 for L2 on CIFAR)")
    a("--steps", dest="eval_steps", metavar="STEPS", type=int, default=10,
      help="attack steps along the paths")
    a("--step-size", default=None, help="PGD step size (default eps/4)")
    a("--restarts", type=int, default=1, help="attack restarts along the paths")
    a("--train-steps", type=int, default=5, help="PGD steps for BN recomputation on adv inputs, "
      "adv activation matching and curve fitting")
    a("--t-points", type=int, default=11, help="evenly spaced t in [0, 1]")
    a("--test-subset", type=int, default=200, help="test examples (seeded subset; 0 = all)")
    a("--train-subset", type=int, default=10000, help="training examples for BN recomputation, "
      "alignment and curve fitting (0 = all)")
    a("--bn-inputs", default="adv", help="BatchNorm recomputed at each t on clean or adv inputs")
    a("--bn-batches", type=int, default=10, help="training batches for BN recomputation")
    a("--batch-size", type=int, default=128, help="batch size for BN recomputation and fitting")
    a("--curve-epochs", type=int, default=4, help="epochs of curve fitting (bezier/polychain)")
    a("--curve-lr", default="0.015", help="learning rate of curve fitting")
    a("--refine-rounds", type=int, default=2, help="bisection rounds around each path's lowest "
      "robust accuracy after the grid (2 extra t per round; 0 = off)")
    a("--augment", action="store_true", help="curve fitting on randomly cropped and flipped "
      "training images")
    a("--t-batch", type=int, default=1, help="t evaluated at once with torch.func.vmap (speed "
      "only: same results; memory grows with it)")
    a("--no-amp", action="store_true", help="no bfloat16 autocast in curve fitting on CUDA "
      "(no effect on CPU)")
    a("--bn-endpoints", action="store_true", help="recompute BatchNorm at t = 0 and t = 1 too "
      "(default: the published models with their own statistics)")
    a("--strong-examples", type=int, default=200, help="test examples (a seeded subset) attacked "
      "by the strong stage: standard AutoAttack and many-restart PGD at both endpoints and "
      "each path's worst t")
    a("--aa-version", default="standard", help="AutoAttack version (Croce & Hein's code) of "
      "the strong stage and of --attack autoattack: standard, plus, rand, custom")
    a("--aa-attacks", default=None, help="with --aa-version custom: sub-attacks from apgd-ce, "
      "apgd-dlr, apgd-t, fab, fab-t, square")
    a("--strong-pgd-steps", type=int, default=50, help="steps of the strong stage's PGD "
      "(step 2.5 eps/steps; accuracy-only: an example is no longer attacked once broken)")
    a("--strong-pgd-restarts", type=int, default=10, help="restarts of the strong stage's PGD")
    a("--strong-t", default="", help="extra t for the strong stage, comma-separated (always: "
      "0, 1 and the t of the lowest PGD robust accuracy)")
    a("--no-strong", action="store_true", help="skip the strong stage")
    a("--no-transfer", action="store_true", help="skip the transfer check along the whole path "
      "(the evaluation attack's examples made against each endpoint, evaluated at every t; "
      "flagged by a McNemar test against the direct attack)")
    a("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    a("--trust-checkpoints", action="store_true", help="allow full unpickling of checkpoints "
      "that hold more than tensors (only for files you trust)")
    a("--expect-sha256", default=None, help="pin checkpoints: NAME=SHA256[,NAME=SHA256...] or "
      "a sha256sum-style file (SHA256  NAME.pt per line); a mismatch stops the run")
    a("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    a("--out", default=None, help="run folder (default runs/zoo-<dataset>-<threat>; runs/ is "
      "git-ignored: committed results/ folders are made with an explicit --out results/...)")
    a("--overwrite", action="store_true",
      help="allow --out to hold a comparison with a different configuration")
    a("--no-progress", action="store_true", help="hide progress bars")
    a("--workers", type=int, default=None, help="processes running independent stage nodes "
      "at once, one torch thread each, as in bench (default 1 for the zoo: every worker "
      "process loads its own copy of the models; results are the same for any value)")
    # every other shared field (--renorm, --strong-at, --plane-grid, --curvature,
    # --curvature-iters, a field added later) gets bench's flag from the dataclass
    q.set_defaults(derived_fields=tuple(add_field_flags(q, CompareConfig, flag_of, FIELD_HELP)))
    add_run_options(q)


#: fields of comparisons' config.json written before the shared schema -> today's
LEGACY_FIELDS = {"steps": "eval_steps", "threat": "norm"}


def file_defaults(values: dict) -> dict:
    """What a comparison resolves for fields left out."""
    return CompareConfig().to_dict()


def config_from_args(args) -> CompareConfig:
    pairs = None
    if args.pairs:
        pairs = []
        for item in split_list(args.pairs):
            parts = item.split(":")
            if len(parts) != 2 or not all(parts):
                raise UserError(f"--pairs items look like A:B, got {item!r}")
            pairs.append(parts)
    try:
        strong_t = [float(t) for t in split_list(args.strong_t)]
    except ValueError:
        raise UserError(f"--strong-t must be numbers in [0, 1], got {args.strong_t!r}") from None
    cfg = CompareConfig(
        models=split_list(args.models or ""), model_dir=args.model_dir, dataset=args.dataset,
        norm=args.norm, data_root=args.data_root, pairs=pairs, align=split_list(args.align),
        align_inputs=args.align_inputs, align_samples=args.align_samples, paths=split_list(args.paths),
        bends=args.bends, attack=args.attack, eps=args.eps, eval_steps=args.eval_steps,
        step_size=args.step_size, restarts=args.restarts, train_steps=args.train_steps,
        t_points=args.t_points, test_subset=args.test_subset, train_subset=args.train_subset,
        bn_inputs=args.bn_inputs, bn_batches=args.bn_batches, batch_size=args.batch_size,
        curve_epochs=args.curve_epochs,
        curve_lr=parse_fraction(args.curve_lr, name="--curve-lr", allow_zero=False),
        refine_rounds=args.refine_rounds, bn_endpoints=args.bn_endpoints,
        augment=args.augment, t_batch=args.t_batch, amp=not args.no_amp,
        strong=not args.no_strong, strong_examples=args.strong_examples,
        aa_version=args.aa_version,
        aa_attacks=split_list(args.aa_attacks) if args.aa_attacks else None,
        strong_pgd_steps=args.strong_pgd_steps, strong_pgd_restarts=args.strong_pgd_restarts,
        strong_t=strong_t, transfer=not args.no_transfer, bootstrap=args.bootstrap,
        trust_checkpoints=args.trust_checkpoints,
        expect_sha256=parse_expect_sha256(args.expect_sha256), device=args.device,
        out=args.out or "")
    # the flags derived from fields (robustpath.cli.add_field_flags) carry the field's name
    for f in getattr(args, "derived_fields", ()):
        if getattr(args, f) is not None:
            setattr(cfg, f, getattr(args, f))
    if args.curvature_iters is not None and not cfg.curvature_examples:
        raise UserError("--curvature-iters needs --curvature N (N > 0)")
    cfg.validate()
    cfg.out = cfg.out or f"runs/zoo-{cfg.dataset}-{cfg.threat}"
    return cfg


