"""``python -m robustpath.zoo compare``: its settings (:class:`CompareConfig`) and flags."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

from ..attacks import ATTACKS, AttackConfig
from ..cli import data_root, split_list
from ..config import MATCH_METHODS as ALIGN_METHODS  # zoo runs one-shot matchers, not PAM
from ..config import MAX_BOOTSTRAP, MAX_REFINE_ROUNDS, MAX_T_POINTS
from ..errors import UserError
from ..numbers import parse_fraction
from .access import (
    DEFAULT_MODEL_DIR,
    EPS_OF_THREAT,
    NORM_OF_THREAT,
    parse_dataset,
    parse_expect_sha256,
    parse_threat,
)


@dataclass
class CompareConfig:
    """Resolved settings of ``python -m robustpath.zoo compare`` (written to config.json).

    ``pairs``: explicit model pairs (default: every same-architecture pair of
    ``models``). Attacks: ``attack`` with ``steps`` evaluates the paths; PGD with
    ``train_steps`` makes adversarial inputs for BatchNorm recomputation, activation
    matching on ``adv`` inputs and curve fitting; the strong stage (standard AutoAttack and
    many-restart PGD, :mod:`robustpath.strong`) runs at the endpoints, the worst t and
    ``strong_t``. t = 0 and t = 1 are the published models with their own BatchNorm
    statistics unless ``bn_endpoints``.
    """

    models: list[str] = field(default_factory=list)
    model_dir: str = DEFAULT_MODEL_DIR
    dataset: str = "cifar10"
    threat: str = "Linf"
    data_root: str | None = None
    pairs: list[list[str]] | None = None
    align: list[str] = field(default_factory=lambda: ["none", "weight"])
    align_inputs: str = "clean"
    align_samples: int = 2000
    paths: list[str] = field(default_factory=lambda: ["line"])
    bends: int = 1
    attack: str = "pgd"
    eps: float | None = None
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    train_steps: int = 5
    t_points: int = 11
    test_subset: int = 200
    train_subset: int = 10000
    bn_inputs: str = "adv"
    bn_batches: int = 10
    batch_size: int = 128
    curve_epochs: int = 4
    curve_lr: float = 0.015
    refine_rounds: int = 2
    bn_endpoints: bool = False   # recompute BN at t = 0, 1 too (default: published statistics)
    augment: bool = False        # curve fitting: random crop + flip (as the bench's --augment)
    t_batch: int = 1             # t evaluated at once with vmap (speed only; same results)
    amp: bool = True             # bfloat16 autocast in curve fitting on CUDA; no-op on CPU
    strong: bool = True
    strong_examples: int = 200
    aa_version: str = "standard"
    aa_attacks: list[str] | None = None
    strong_pgd_steps: int = 50
    strong_pgd_restarts: int = 10
    strong_t: list[float] = field(default_factory=list)
    transfer: bool = True
    bootstrap: int = 1000
    trust_checkpoints: bool = False
    expect_sha256: dict = field(default_factory=dict)  # model name -> sha256 of its .pt
    device: str = "auto"
    out: str = ""

    @property
    def norm(self) -> str:
        return NORM_OF_THREAT[self.threat]

    def train_attack(self, seed: int | None = None) -> AttackConfig:
        return AttackConfig(name="pgd", norm=self.norm, eps=self.eps, steps=self.train_steps,
                            step_size=self.step_size, seed=seed)

    def eval_attack(self) -> AttackConfig:
        # as bench: --aa-version / --aa-attacks choose `--attack autoattack`'s version too
        aa = self.attack == "autoattack" and (self.aa_version != "standard" or self.aa_attacks)
        return AttackConfig(name=self.attack, norm=self.norm, eps=self.eps, steps=self.steps,
                            step_size=self.step_size, restarts=self.restarts, seed=0,
                            aa_version=self.aa_version if aa else None,
                            aa_attacks=self.aa_attacks if aa else None)

    def strong_settings(self):
        """The shared strong stage's settings (:class:`robustpath.strong.StrongSettings`)."""
        from ..strong import StrongSettings

        return StrongSettings(examples=self.strong_examples, aa_version=self.aa_version,
                              aa_attacks=self.aa_attacks, pgd_steps=self.strong_pgd_steps,
                              pgd_restarts=self.strong_pgd_restarts, seed=0,
                              extra_t=list(self.strong_t)).validate()

    def validate(self) -> CompareConfig:
        from .. import curves
        from .. import data as data_mod

        self.dataset, self.threat = parse_dataset(self.dataset), parse_threat(self.threat)
        if self.dataset not in data_mod.DATASETS:
            raise UserError(f"compare needs test data robustpath can load; {self.dataset} is not "
                            f"one of {', '.join(data_mod.DATASETS.names())}")
        if self.threat not in NORM_OF_THREAT:
            raise UserError(f"compare supports the Linf and L2 threat models, not {self.threat}")
        if self.eps is None:
            self.eps = EPS_OF_THREAT[self.threat]
        self.eps = parse_fraction(self.eps, name="--eps")
        from ..attacks import check_eps_range

        check_eps_range(self.norm, self.eps)  # Linf eps > 1: every image reachable (as bench)
        if self.step_size is not None:
            self.step_size = parse_fraction(self.step_size, name="--step-size", allow_zero=False)
        from pathlib import Path

        if Path(self.model_dir).exists() and not Path(self.model_dir).is_dir():
            raise UserError(f"--model-dir {self.model_dir} is a file, not a folder")
        if len(self.models) < 2 or len(set(self.models)) != len(self.models):
            raise UserError(f"--models needs at least two distinct names, got {self.models}")
        for a in self.align:
            if a not in ALIGN_METHODS:
                raise UserError(f"unknown alignment method {a!r} "
                                f"(known: {', '.join(ALIGN_METHODS)})")
        for p in self.paths:
            curves.CURVES.get(p)
        if not self.align or not self.paths:
            raise UserError("--align and --paths need at least one value each")
        for flag, value in (("--align-inputs", self.align_inputs), ("--bn-inputs", self.bn_inputs)):
            if value not in ("clean", "adv"):
                raise UserError(f"{flag} must be clean or adv, got {value!r}")
        if self.strong:
            self.strong_settings()
        elif (self.aa_attacks or self.aa_version != "standard") and self.attack != "autoattack":
            raise UserError("--aa-version / --aa-attacks need the strong stage (drop --no-strong) "
                            "or --attack autoattack")   # as bench: not ignored silently
        if self.attack == "autoattack":
            self.eval_attack().validate()
        ATTACKS.get(self.attack)
        if not 0 <= self.refine_rounds <= MAX_REFINE_ROUNDS:
            raise UserError(f"--refine-rounds must be in 0..{MAX_REFINE_ROUNDS}, "
                            f"got {self.refine_rounds}")
        for name in ("steps", "restarts", "train_steps", "bn_batches",
                     "batch_size", "curve_epochs", "bootstrap", "bends", "align_samples",
                     "t_batch"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, "
                                f"got {getattr(self, name)}")
        if self.bootstrap > MAX_BOOTSTRAP:
            raise UserError(f"--bootstrap must be <= {MAX_BOOTSTRAP}, got {self.bootstrap}")
        if not 2 <= self.t_points <= MAX_T_POINTS:
            raise UserError(f"--t-points must be in 2..{MAX_T_POINTS}, got {self.t_points}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0 (0 = all)")
        for t in self.strong_t:
            if not 0.0 <= float(t) <= 1.0:
                raise UserError(f"--strong-t values must lie in [0, 1], got {t}")
        self.eval_attack().validate()
        self.train_attack().validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def add_compare_arguments(q: argparse.ArgumentParser) -> None:
    a = q.add_argument
    a("--models", required=True, help="zoo names, comma-separated (at least two)")
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
    a("--attack", default="pgd", help="attack evaluated along the paths (see robustpath.attacks)")
    a("--eps", default=None, help="attack radius in pixels, e.g. 8/255 (default 8/255 for Linf, "
      "0.5 for L2)")
    a("--steps", type=int, default=10, help="attack steps along the paths")
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
        models=split_list(args.models), model_dir=args.model_dir, dataset=args.dataset,
        threat=args.threat, data_root=args.data_root, pairs=pairs, align=split_list(args.align),
        align_inputs=args.align_inputs, align_samples=args.align_samples, paths=split_list(args.paths),
        bends=args.bends, attack=args.attack, eps=args.eps, steps=args.steps,
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
    cfg.validate()
    cfg.out = cfg.out or f"runs/zoo-{cfg.dataset}-{cfg.threat}"
    return cfg


