"""Benchmark configuration: one dataclass, presets, and resolution of defaults.

Presets (``--preset``):

* ``quick`` - the CPU default: Fashion-MNIST, ``cnn-small``, three seed pairs (0,1),
  (2,3), (4,5), 10,000 training images,
  4 endpoint epochs, 4 curve epochs, 1,000 test images, 11 t points, PGD-5 in
  training, PGD-10 in evaluation, BatchNorm recomputed on 2 batches of 128 at each t
  (``studies/results/bn_study.md``: 1-10 batches change robust accuracy by <= 0.6
  points), 13x13 loss planes of the first pair's Bezier curves, 2 refinement rounds around each
  path's minimum, and the strong stage (standard AutoAttack and PGD-50 x 10) on 16
  test examples at the endpoints and each path's worst t (it adds 24 % to the rest of
  the run; its AutoAttack CIs are about +-25 points wide: ``benchmarks/STRONG.md``; use
  ``--strong-examples 1000`` for numbers to publish). About 20 min from scratch with one
  torch thread on 2 idle cores.
* ``paper`` - Tatro et al. 2020's robust protocol from their code, for a GPU: CIFAR-10,
  TinyTen, full data, 3 seed pairs, 200 endpoint and 200 curve epochs at lr 0.1 with
  Garipov's schedule, rotation + crop + flip for endpoints and curves, attacks in train
  mode during endpoint training, activation matching on the first 10,000 training
  images, PGD-5 L-inf eps 8/255 step 2/255 in training and evaluation, 65 t points,
  BN recomputed on adversarial inputs of the whole training set. Setting by setting,
  with sources and remaining deviations: ``docs/paper_protocol.md``.
* ``modern`` - the same data and model with robustpath's own choices (one-cycle /
  cosine schedules, curve lr 0.015, eval-mode attacks, BN from 40 batches).
* ``paper-fmnist`` - the paper protocol scaled down for a CPU on Fashion-MNIST, one seed
  pair by default (``--seeds 0,1,2,3,4,5`` for the paper's three). The preset as it is
  took 48 min with one torch thread on a partly loaded 2-core CPU, 41 of them the strong
  stage on 500 examples (``results/fashion-mnist-tinyten-paper-fmnist/timings.json``;
  ``--no-strong``: about 7 min).

Flags given on the command line override the preset. Default eps: 0.1 for the
28x28 grey-scale datasets, 8/255 for CIFAR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from robustpath import data as data_mod
from robustpath import models
from robustpath.align import methods
from robustpath.attacks.base import ATTACKS, AttackConfig, parse_norm
from robustpath.errors import UserError
from robustpath.numbers import parse_fraction
from robustpath.registry import Registry

PRESETS: Registry[dict] = Registry("preset")

#: The embedded default: three seed pairs (0,1), (2,3), (4,5) so that tables carry
#: mean +- std over pairs and paired differences cover seeds as well as examples.
PRESETS.register("quick")({
    "dataset": "fashion-mnist", "arch": "cnn-small", "width": 1.0, "seeds": [0, 1, 2, 3, 4, 5],
    "train_subset": 10000, "test_subset": 1000, "endpoint_epochs": 4, "curve_epochs": 4,
    "strong_examples": 16,
    "t_points": 11, "train_steps": 5, "eval_steps": 10, "bn_batches": 2, "lr": 0.05,
    "curve_lr": 0.02, "batch_size": 128, "augment": False, "plane_grid": 13,
})
#: Tatro et al. 2020's robust protocol, every value from their code (IBM/NeuronAlignment);
#: docs/paper_protocol.md is generated from this entry (robustpath.report.protocol) with the
#: source line of each value and the deviations that remain.
PRESETS.register("paper")({
    "dataset": "cifar10", "arch": "tinyten", "width": 1.0, "seeds": [0, 1, 2, 3, 4, 5],
    "train_subset": 0, "test_subset": 0, "endpoint_epochs": 200, "curve_epochs": 200,
    "t_points": 65, "train_steps": 5, "eval_steps": 5, "bn_batches": 391, "bn_inputs": "adv",
    "lr": 0.1, "curve_lr": 0.1, "batch_size": 128, "augment": True, "affine_degrees": 15.0,
    "schedule": "garipov", "curve_schedule": "garipov", "attack_mode": "train",
    "align_samples": 10000,
})
#: robustpath's own choices on the paper's data and model (the former ``paper`` preset):
#: one-cycle / cosine schedules, curve lr 0.015, attacks in eval mode, no rotation, BN
#: statistics from 40 batches.
PRESETS.register("modern")({
    "dataset": "cifar10", "arch": "tinyten", "width": 1.0,
    "train_subset": 0, "test_subset": 0, "endpoint_epochs": 200, "curve_epochs": 200,
    "t_points": 65, "train_steps": 5, "eval_steps": 5, "bn_batches": 40, "lr": 0.1,
    "curve_lr": 0.015, "batch_size": 128, "augment": True,
})
#: The paper protocol scaled down for a CPU (48 min, see above): Fashion-MNIST (eps 0.1,
#: step eps/4 as theirs), 2,000 training and 500 test images, 6 endpoint and 6 curve
#: epochs, 11 t points, BN statistics from the whole (2,000-image) training subset;
#: alignment reads up to 10,000 training images as theirs (here all 2,000).
PRESETS.register("paper-fmnist")({
    "dataset": "fashion-mnist", "arch": "tinyten", "width": 1.0,
    "train_subset": 2000, "test_subset": 500, "endpoint_epochs": 6, "curve_epochs": 6,
    "t_points": 11, "train_steps": 5, "eval_steps": 5, "bn_batches": 16, "bn_inputs": "adv",
    "lr": 0.1, "curve_lr": 0.1, "batch_size": 128, "augment": True, "affine_degrees": 15.0,
    "schedule": "garipov", "curve_schedule": "garipov", "attack_mode": "train",
    "align_samples": 10000,
})

# alignment methods and their metadata: robustpath.align.methods (one registry)
MATCH_METHODS = methods.ONE_SHOT   # one-shot matchers (robustpath.align)
PAM_METHODS = methods.PAM          # PAM (robustpath.pam.robust) -> the method it starts from
ALIGN_METHODS = methods.ORDER
#: config fields whose command-line flag is not ``--<field-with-dashes>`` (errors name
#: the flag the user typed, not the field)
FLAGS = {"endpoint_epochs": "--epochs", "eval_steps": "--steps", "norm": "--threat-model",
         "curvature_examples": "--curvature", "expect_sha256": "--expect-sha256"}
THREAT_OF_NORM = {"linf": "Linf", "l2": "L2"}
#: help of the flags derived from fields (robustpath.cli.add_field_flags): fields whose
#: flag the parsers do not write out
FIELD_HELP = {
    "lr": "peak learning rate of endpoint training",
    "curve_lr": "learning rate of curve fitting",
    "augment": "endpoint and curve training on randomly cropped and flipped images",
    "strong_t": "extra t for the strong stage, comma-separated (always: 0, 1 and the t "
                "of the lowest PGD robust accuracy)",
    "bn_endpoints": "recompute BatchNorm at t = 0 and t = 1 too (--no-bn-endpoints: the "
                    "endpoints keep their own statistics)",
    # written out by bench's parser; the zoo's compare derives them with this help
    "renorm": "how each point of a path is renormalised: bn-reset (BatchNorm statistics "
              "re-estimated), repair (REPAIR, Jordan et al. 2022), repair-adv (REPAIR on PGD "
              "inputs), none; path evaluation, strong and curvature stages (default bn-reset)",
    "strong_at": "points the strong stage attacks: ends-worst (t = 0, 1 and PGD's worst t) or "
                 "grid (every grid t as well) (default ends-worst)",
    "plane_grid": "loss surface on each bezier curve's plane (first pair) on an N x N grid "
                  "(0 = off; default 0)",
    "curvature_examples": "input curvature along every path (Zhao et al. 2020): top "
                          "eigenvalue of the input Hessian of the loss at each grid t on the "
                          "first N test examples; writes curvature.{csv,md} (0 = off; default 0)",
    "curvature_iters": "power iterations per example for --curvature, at most (default 20)",
}
#: bootstrap resamples at most: the resample weights are one [resamples, examples] float64
#: array, so 10^8 would fail for memory only after every stage had run
MAX_BOOTSTRAP = 100_000
MAX_LR = 100.0  # SGD step sizes beyond this diverge at once (issue 25)
#: t points at most (step 1e-4; per-t arrays are [t, examples]) and refinement rounds at
#: most (each halves the bracket: 2^-30 of a grid step is below any measurable change)
MAX_T_POINTS, MAX_REFINE_ROUNDS = 10_001, 30
DEFAULT_EPS = {"fashion-mnist": 0.1, "mnist": 0.1, "cifar10": 8 / 255, "cifar100": 8 / 255}


def flag_of(name: str) -> str:
    """The command-line flag of config field ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def default_eps(dataset: str, norm: str) -> float:
    """The attack radius a run gets when ``--eps`` is left out: RobustBench's budgets
    for CIFAR (L-inf 8/255, L2 0.5), 0.1 for the 28x28 grey-scale datasets (the
    literature's Fashion-MNIST / MNIST L-inf radius; used for L2 as before)."""
    if parse_norm(norm).value == "l2" and dataset in ("cifar10", "cifar100"):
        return 0.5
    return DEFAULT_EPS.get(dataset, 8 / 255)


def _check_lr(cfg, name: str) -> None:
    """1e300 would only fail as NaN weights, much later (issue 25)."""
    v = getattr(cfg, name)
    if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= MAX_LR):
        raise UserError(f"{flag_of(name)} must be a number in (0, {MAX_LR}], got {v}")


def _check_at_least_one(cfg, names) -> None:
    for name in names:
        if int(getattr(cfg, name)) < 1:
            raise UserError(f"{flag_of(name)} must be >= 1, got {getattr(cfg, name)}")


# ---------------------------------------------------------------- setting groups
# Each group is defined once and composed (dataclass inheritance keeps the flat field
# names that config.json, cache keys and old run folders use). Field names are the
# config.json names; ``flag_of`` gives the command-line flag where it differs.
@dataclass
class DataSettings:
    """Which examples a run reads."""

    dataset: str = "fashion-mnist"
    train_subset: int = 10000    # 0: the whole training set
    test_subset: int = 1000      # 0: the whole test set
    batch_size: int = 128
    data_root: str | None = None

    def check_data(self) -> None:
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) < 0:
                raise UserError(f"{flag_of(name)} must be >= 0 (0 = all)")


@dataclass
class ThreatSettings:
    """The threat model (RobustBench's ``Linf`` / ``L2``, stored as ``norm`` linf/l2)
    and its attacks: ``attack`` with ``eval_steps`` evaluates (``--steps``), PGD with
    ``train_steps`` makes training / BatchNorm / adv-matching inputs."""

    attack: str = "pgd"
    norm: str = "linf"
    eps: float | None = 0.1      # None: default_eps(dataset, norm), resolved by validate()
    step_size: float | None = None
    train_steps: int = 5
    eval_steps: int = 10
    restarts: int = 1

    @property
    def threat_model(self) -> str:
        """RobustBench's name of the threat model: ``Linf`` or ``L2``."""
        return THREAT_OF_NORM[parse_norm(self.norm).value]

    def train_attack(self, seed: int | None = None) -> AttackConfig:
        """PGD used to make training inputs (endpoints, curves, BN and adv matching)."""
        return AttackConfig(name="pgd", norm=self.norm, eps=self.eps, steps=self.train_steps,
                            step_size=self.step_size, seed=seed)

    def eval_attack(self) -> AttackConfig:
        """The configured attack for evaluation along paths (seeded for repeatability)."""
        # --aa-version / --aa-attacks also choose the version of `--attack autoattack`; the
        # standard version stays None in the config so its cache keys are the ones of runs
        # made before the option reached this attack.
        aa = self.attack == "autoattack" and (self.aa_version != "standard" or self.aa_attacks)
        return AttackConfig(name=self.attack, norm=self.norm, eps=self.eps, steps=self.eval_steps,
                            step_size=self.step_size, restarts=self.restarts, seed=0,
                            aa_version=self.aa_version if aa else None,
                            aa_attacks=self.aa_attacks if aa else None)

    def check_threat(self) -> None:
        ATTACKS.get(self.attack)
        self.norm = parse_norm(self.norm).value
        if self.eps is None:
            self.eps = default_eps(self.dataset, self.norm)
        self.eps = parse_fraction(self.eps, name="--eps")
        from robustpath.attacks.base import check_eps_range

        check_eps_range(self.norm, self.eps)
        if self.step_size is not None:
            self.step_size = parse_fraction(self.step_size, name="--step-size", allow_zero=False)
        _check_at_least_one(self, ("train_steps", "eval_steps", "restarts"))


@dataclass
class AlignSettings:
    """Alignment of endpoint B to A (methods: :mod:`robustpath.align.methods`)."""

    align: list[str] = field(default_factory=lambda: ["none", "activation"])
    align_inputs: str = "clean"
    align_samples: int = 2000    # first training examples activation matching reads (Tatro: 10,000)

    #: the methods a command may name (the zoo: one-shot matchers only)
    ALIGN_CHOICES = methods.ORDER

    def check_align(self) -> None:
        for a in self.align:
            if a not in self.ALIGN_CHOICES:
                raise UserError(f"unknown alignment method {a!r} "
                                f"(known: {', '.join(self.ALIGN_CHOICES)})")
        if self.align_inputs not in ("clean", "adv"):
            raise UserError(f"--align-inputs must be clean or adv, got {self.align_inputs!r}")
        _check_at_least_one(self, ("align_samples",))


@dataclass
class CurveSettings:
    """Path families and curve fitting (PGD in the loop)."""

    paths: list[str] = field(default_factory=lambda: ["line", "bezier"])
    bends: int = 1
    curve_epochs: int = 4
    curve_lr: float = 0.02
    augment: bool = False

    def check_curves(self) -> None:
        from robustpath.paths import curves  # late: curves imports torch.func machinery

        for p in self.paths:
            curves.CURVES.get(p)
        if not self.paths or not self.align:
            raise UserError("--paths and --align need at least one value each")
        for flag, values in (("--paths", self.paths), ("--align", self.align)):
            if len(set(values)) != len(values):  # the t-grid check would fail after all work
                raise UserError(f"{flag} must be distinct, got {','.join(map(str, values))}")
        _check_at_least_one(self, ("bends", "curve_epochs"))
        _check_lr(self, "curve_lr")


@dataclass
class PathEvalSettings:
    """Evaluation along a path: t grid, per-t renormalisation, refinement, intervals."""

    t_points: int = 11
    bn_batches: int = 10
    bn_inputs: str = "adv"
    renorm: str = "bn-reset"     # per-t renormalisation: robustpath.paths.repair.RENORMS
    bn_endpoints: bool = True    # recompute BN at t = 0, 1 too (zoo: False keeps published stats)
    refine_rounds: int = 2       # bisection rounds around each path's minimum (2 extra t each)
    bootstrap: int = 1000

    def check_eval(self) -> None:
        if self.bn_inputs not in ("clean", "adv"):
            raise UserError(f"--bn-inputs must be clean or adv, got {self.bn_inputs!r}")
        from robustpath.paths.repair import RENORMS  # late: the registry lives with the algorithm

        RENORMS.get(self.renorm)  # one-line UserError listing the choices
        if not 2 <= self.t_points <= MAX_T_POINTS:
            raise UserError(f"--t-points must be in 2..{MAX_T_POINTS}, got {self.t_points}")
        if not 0 <= self.refine_rounds <= MAX_REFINE_ROUNDS:
            raise UserError(f"--refine-rounds must be in 0..{MAX_REFINE_ROUNDS}, "
                            f"got {self.refine_rounds}")
        _check_at_least_one(self, ("bn_batches", "bootstrap"))
        if self.bootstrap > MAX_BOOTSTRAP:
            raise UserError(f"--bootstrap must be <= {MAX_BOOTSTRAP}, got {self.bootstrap}")


@dataclass
class StrongStageSettings:
    """The strong stage (:mod:`robustpath.strong.stage`): AutoAttack + many-restart PGD at the
    endpoints, each path's worst t and ``strong_t``."""

    strong: bool = True
    strong_examples: int = 1000  # test examples the strong stage attacks (RobustBench n_examples)
    aa_version: str = "standard"  # AutoAttack version: standard | plus | rand | custom
    aa_attacks: list[str] | None = None  # AutoAttack custom: its sub-attacks
    strong_pgd_steps: int = 50   # the strong stage's many-restart PGD: steps ...
    strong_pgd_restarts: int = 10  # ... and restarts
    strong_t: list[float] = field(default_factory=list)  # extra t besides 0, 1, worst
    strong_at: str = "ends-worst"  # strong stage points: ends-worst | grid (every grid t too)

    def strong_settings(self):
        """The strong stage's settings (:class:`robustpath.strong.stage.StrongSettings`)."""
        from robustpath.strong.stage import StrongSettings

        return StrongSettings(examples=self.strong_examples, aa_version=self.aa_version,
                              aa_attacks=self.aa_attacks, pgd_steps=self.strong_pgd_steps,
                              pgd_restarts=self.strong_pgd_restarts, seed=0,
                              extra_t=[float(t) for t in self.strong_t],
                              at=self.strong_at).validate()

    def check_strong(self) -> None:
        if self.strong:
            self.strong_settings()  # checks --strong-examples, --aa-version, --aa-attacks
        elif (self.aa_attacks or self.aa_version != "standard") and self.attack != "autoattack":
            raise UserError("--aa-version / --aa-attacks need the strong stage (drop --no-strong) "
                            "or --attack autoattack")
        if self.attack == "autoattack":
            self.eval_attack().validate()  # checks --aa-version / --aa-attacks for the path attack
        for t in self.strong_t:
            if not 0.0 <= float(t) <= 1.0:
                raise UserError(f"--strong-t values must lie in [0, 1], got {t}")


@dataclass
class RuntimeSettings:
    """How a run executes; none of these enter a cache key."""

    t_batch: int = 1             # t evaluated at once with vmap (speed only; same results)
    amp: bool = True             # bfloat16 autocast in training stages on CUDA; no-op on CPU
    device: str = "auto"
    out: str = ""


@dataclass
class StageConfig(DataSettings, ThreatSettings, AlignSettings, CurveSettings,
                  PathEvalSettings, StrongStageSettings, RuntimeSettings):
    """The settings every path-measuring command shares (bench, sweep cells, zoo): the
    groups above, with one :meth:`validate`."""

    def validate(self):
        self.check_data()
        data_mod.info(self.dataset)
        self.check_threat()
        self.check_align()
        self.check_curves()
        self.check_eval()
        self.check_strong()
        _check_at_least_one(self, ("batch_size", "t_batch"))
        self.eval_attack().validate()
        self.train_attack().validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchConfig(StageConfig):
    """The resolved configuration of one benchmark run (written into the run folder):
    the shared groups plus the endpoints it trains (seed pairs) and its bench-only stages."""

    preset: str = "quick"
    arch: str = "cnn-small"
    width: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    # endpoint training
    endpoint_epochs: int = 4
    lr: float = 0.05
    affine_degrees: float = 0.0  # endpoint + curve training: random rotation (Tatro et al.: 15)
    schedule: str = "onecycle"   # endpoint lr schedule (robustpath.train.loop.SCHEDULES)
    attack_mode: str = "eval"    # endpoint training's attacks in eval or train mode
    curve_schedule: str = "cosine"  # curve lr schedule (robustpath.paths.fit.SCHEDULES)
    pam_iters: int = 2           # PAM outer iterations (alignments pam-* / tatro-*)
    plane_grid: int = 0          # 0: no loss-surface plane plots
    curvature_examples: int = 0  # input-Hessian curvature per t on N test examples; 0: off
    curvature_iters: int = 20    # its power iterations (robustpath.paths.curvature)
    fuse: bool = True            # robustpath.models.fuse views (same function, other float rounding)
    # endpoints read from two files instead of trained from seeds (--endpoints A,B; then
    # seeds is [], bn_endpoints False, one pair; robustpath.engine.endpoint_files): robustpath.train.loop
    # checkpoints, or with arch "pkg.module:Factory" .pt / .safetensors state dicts
    endpoints: list[str] = field(default_factory=list)

    def pairs(self) -> list[tuple[int, int]]:
        """Seed pairs: consecutive seeds (0,1), (2,3)... ; with 2 seeds one pair."""
        s = self.seeds
        return [(s[i], s[i + 1]) for i in range(0, len(s) - 1, 2)]

    def check_endpoint_count(self) -> None:
        """The bench pairs its endpoints: two files, or an even number of seeds."""
        if self.endpoints and len(self.endpoints) != 2:
            raise UserError(f"--endpoints needs two files (one pair), got {len(self.endpoints)}")
        if not self.endpoints and (len(self.seeds) < 2 or len(self.seeds) % 2):
            raise UserError(f"--seeds needs an even number of seeds (pairs), got {self.seeds}")

    def validate(self) -> BenchConfig:
        super().validate()
        from robustpath.engine.endpoint_files import check_files, is_factory

        if is_factory(self.arch) and not self.endpoints:
            raise UserError(f"--arch {self.arch} (a module:Factory) needs --endpoints A,B "
                            "(its weights come from your files)")
        if not is_factory(self.arch):
            models.MODELS.get(self.arch)
        self.check_endpoint_count()
        if self.endpoints:
            check_files(list(self.endpoints), self.arch, self.dataset, self.width)
        from robustpath.paths import fit as curve_train
        from robustpath.train import loop as train  # late: heavy imports

        train.SCHEDULES.get(self.schedule)
        curve_train.SCHEDULES.get(self.curve_schedule)
        if self.attack_mode not in train.ATTACK_MODES:
            raise UserError(f"--attack-mode must be eval or train, got {self.attack_mode!r}")
        if not 0 <= self.affine_degrees <= 180:
            raise UserError(f"--affine-degrees must lie in [0, 180], got {self.affine_degrees}")
        if self.endpoints and self.seeds:
            raise UserError("--seeds and --endpoints exclude each other (the endpoints come "
                            "from the files)")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds must be distinct, got {self.seeds}")
        _check_at_least_one(self, ("endpoint_epochs", "pam_iters"))
        _check_lr(self, "lr")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width)
                and self.width > 0):
            raise UserError(f"--width must be a finite number > 0, got {self.width}")
        for s in self.seeds:
            train.check_seed(s)
        check_path_stages(self)
        from robustpath.attacks.base import build_attack

        # building the attacks checks combinations (e.g. fgsm is L-inf only) before any work
        build_attack(self.eval_attack(), data_mod.info(self.dataset).num_classes)
        build_attack(self.train_attack(), data_mod.info(self.dataset).num_classes)
        return self


def check_path_stages(cfg) -> None:
    """The curvature and plane settings (bench and zoo compare): ``--curvature N`` >= 0
    and at most the test examples, ``--curvature-iters`` >= 1, ``--plane-grid`` 0 or >= 3."""
    if cfg.curvature_examples < 0 or cfg.curvature_iters < 1:
        raise UserError("--curvature must be >= 0 (0 = off) and --curvature-iters >= 1, "
                        f"got {cfg.curvature_examples} and {cfg.curvature_iters}")
    if cfg.test_subset > 0 and cfg.curvature_examples > cfg.test_subset:
        raise UserError(f"--curvature {cfg.curvature_examples} exceeds --test-subset {cfg.test_subset}")
    if cfg.plane_grid and cfg.plane_grid < 3:
        raise UserError(f"--plane-grid must be 0 (off) or >= 3, got {cfg.plane_grid}")


def from_preset(preset: str, cls: type = BenchConfig, **overrides) -> BenchConfig:
    """Start from ``preset``, apply non-None ``overrides``; eps defaults per dataset.
    ``cls``: the configuration built (a subclass of :class:`BenchConfig`, e.g. the soup's)."""
    base = dict(PRESETS.get(preset))
    base["preset"] = preset
    for k, v in overrides.items():
        if v is not None:
            base[k] = v
    if base.get("eps") is None:
        base["eps"] = default_eps(base["dataset"], base.get("norm", "linf"))
    if base.get("endpoints"):  # endpoints from files: no seeds; the files' own BN statistics
        if overrides.get("seeds") is None:  # at t = 0, 1, so the ends are the loaded models
            base["seeds"] = []
        if overrides.get("bn_endpoints") is None:
            base["bn_endpoints"] = False
    known = set(cls.__dataclass_fields__)
    unknown = set(base) - known
    if unknown:
        raise UserError(f"unknown config keys: {', '.join(sorted(unknown))}")
    return cls(**base).validate()


def with_changes(cfg: BenchConfig, **kw) -> BenchConfig:
    return replace(cfg, **kw)
