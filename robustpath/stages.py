"""The benchmark's stages, each a function of (config, input files) -> output files.

Every stage names its output by a hash of its resolved configuration *and* of its
inputs' hashes, stores it under ``<run>/ckpt/<stage>/``, and returns the stored
result when it already exists. A second identical run therefore does no work, and
a run killed inside any stage resumes there (curve training also resumes inside
the stage, from its last epoch checkpoint). A cluster executor can run these
functions as separate jobs: they only share files.

Stages: :func:`endpoint` (adversarial training), :func:`alignment` (PAM:
:func:`pam_alignment`), :func:`curve` (fit with PGD in the loop; ``line`` needs no
fitting), :func:`path_eval` (per-example results along t), :func:`strong` (AutoAttack,
many-restart PGD and the transfer check at the ends and the worst t) and :func:`plane`
(re-exported from :mod:`robustpath.plane`). Their keys are :mod:`robustpath.keys`.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from . import curves as curves_mod
from . import data as data_mod
from .attacks import build_attack
from .cache import BoundPointCache, load_npz, recompute_notice, save_npz
from .config import PAM_METHODS, BenchConfig
from .errors import UserError
from .evaluate import PathResult, curve_speed, evaluate_path, refine_minimum, t_grid
from .keys import (  # noqa: F401  (re-exported: stages.align_key etc.)
    PLANE_EXAMPLES,
    _renorm_spec,
    align_key,
    align_spec,
    curve_key,
    curve_spec,
    curve_train_config,
    endpoint_config,
    eval_key,
    eval_spec,
    pam_config,
    pam_settings,
    pam_spec,
    plane_spec,
    strong_spec,
    tatro_config,
)
from .lock import entry_lock
from .plane import stage as plane  # noqa: F401  (the plane stage, re-exported)
from .store import (  # noqa: F401  (re-exported)
    CacheError,
    check_writable,
    checkpoint_exists,
    checkpoint_files,
    config_hash,
    load_checkpoint,
    load_model,
    read_json,
    save_model,
    to_json,
)
from .train import TrainConfig, check_labels, train_endpoint


@dataclass
class RunData:
    """The run's data, loaded once: training subset, test subset, alignment subset."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @classmethod
    def load(cls, cfg: BenchConfig) -> RunData:
        x_tr, y_tr = data_mod.load(cfg.dataset, train=True, root=cfg.data_root,
                                   subset=cfg.train_subset,
                                   seed=data_mod.TRAIN_SUBSET_SEED)
        x_te, y_te = data_mod.load(cfg.dataset, train=False, root=cfg.data_root,
                                   subset=cfg.test_subset,
                                   seed=data_mod.TEST_SUBSET_SEED)
        classes = data_mod.info(cfg.dataset).num_classes
        check_labels(y_tr, classes, f"{cfg.dataset} training data")  # before any work
        check_labels(y_te, classes, f"{cfg.dataset} test data")
        return cls(x_tr, y_tr, x_te, y_te, classes)

    def train_batches(self, cfg: BenchConfig, seed: int = 0, device="cpu", limit: int | None = None):
        x, y = (self.x_train, self.y_train) if limit is None else (self.x_train[:limit],
                                                                   self.y_train[:limit])
        return data_mod.Batches(x, y, cfg.batch_size, shuffle=True, seed=seed, device=device)


def _ckpt(run_dir: Path, stage: str, name: str) -> Path:
    return Path(run_dir) / "ckpt" / stage / name


# ---------------------------------------------------------------- endpoints
def endpoint(cfg: BenchConfig, seed: int, run_dir: Path, data: RunData, device,
             progress: bool = True) -> tuple[nn.Module, dict, str]:
    """Train (or reload) endpoint ``seed``. Returns ``(model, metrics, key)``."""
    tc = endpoint_config(cfg, seed)
    key = config_hash(tc.cache_key())
    path = _ckpt(run_dir, "endpoints", f"{cfg.arch}-seed{seed}-{key}")
    with entry_lock(path):  # sweep cells sharing ckpt/: one trains, the others load
        if checkpoint_exists(path):
            try:
                model, meta = load_model(path, device, require_checksum=True,
                                         expect=_arch(cfg))
                _check_meta(meta, path, config=key, metrics=dict)
                return model.eval(), meta["metrics"], key
            except CacheError as e:
                recompute_notice(e, f"endpoint seed {seed}")
        model, metrics = train_endpoint(tc, path, device=device, progress=progress,
                                        data=(data.x_train, data.y_train, data.x_test,
                                              data.y_test))
    return model.eval(), metrics, key


def _arch(cfg: BenchConfig) -> dict:
    return {"arch": cfg.arch, "dataset": cfg.dataset, "width": float(cfg.width)}


def _check_meta(meta: dict, path: Path, *, config: str | None = None, spec: dict | None = None,
                **kinds) -> None:
    """A cached checkpoint's sidecar must hold what the stage reads (``kinds``: field ->
    type) and be bound to this stage's key (``config``: hash of its TrainConfig cache
    key; ``spec``: the alignment spec)."""
    files = checkpoint_files(path)
    for name, kind in kinds.items():
        if not isinstance(meta.get(name), kind):
            raise CacheError(f"{files[1]} lacks its {name}", files)
    if config is not None:
        try:
            got = config_hash(TrainConfig.from_dict(meta["config"]).cache_key())
        except (KeyError, TypeError, ValueError):
            got = None
        if got != config:
            raise CacheError(f"{files[1]} was trained with another configuration", files)
    if spec is not None and meta.get("spec") != json.loads(to_json(spec)):
        raise CacheError(f"{files[1]} was computed for another configuration", files)


# ---------------------------------------------------------------- alignment
ALIGN_SAMPLES = 2000  # BenchConfig.align_samples default (kept for studies)


def alignment(cfg: BenchConfig, method: str, model_a: nn.Module, model_b: nn.Module,
              key_a: str, key_b: str, run_dir: Path, data: RunData, device,
              progress: bool = True) -> tuple[nn.Module, dict, str]:
    """Align model B onto A with ``method`` (:func:`_align_any`), then check on the first
    256 test examples that the aligned B computes B's logits
    (:func:`robustpath.equivalence.check_same_function`; an error above tolerance). The
    check is recorded in the report as ``equivalence``. Returns ``(aligned_b, report, key)``."""
    from .equivalence import check_same_function

    aligned, report, key = _align_any(cfg, method, model_a, model_b, key_a, key_b, run_dir,
                                      data, device, progress)
    report = {**report, "equivalence": check_same_function(
        model_b, aligned, data.x_test, what=f"alignment {method} of seed model B")}
    return aligned, report, key


def _align_any(cfg: BenchConfig, method: str, model_a: nn.Module, model_b: nn.Module,
               key_a: str, key_b: str, run_dir: Path, data: RunData, device,
               progress: bool = True) -> tuple[nn.Module, dict, str]:
    """Align model B onto A with ``method`` (none | activation | weight | pam-* | tatro-*:
    :mod:`robustpath.methods`).

    Activation matching uses the first ``cfg.align_samples`` training examples (2,000;
    the paper presets 10,000, as Tatro et al.), clean or adversarial (``cfg.align_inputs``).
    ``pam-*`` and ``tatro-*`` run :func:`pam_alignment` from their start method's
    permutation. Returns ``(aligned_b, report, key)``.
    """
    if method in PAM_METHODS:
        return pam_alignment(cfg, method, model_a, model_b, key_a, key_b, run_dir, data, device,
                             progress)
    spec = align_spec(cfg, method, key_a, key_b)
    if method == "none":
        return model_b, {"method": "none"}, config_hash(spec)
    key = config_hash(spec)
    path = _ckpt(run_dir, "align", f"{method}-{key}")
    with entry_lock(path):
        return _alignment(cfg, method, model_a, model_b, spec, key, path, data, device)


def _cached_alignment(cfg: BenchConfig, spec: dict, path: Path, device, what: str,
                      template: nn.Module):
    """A verified cached alignment ``(model, report)``, or None (absent or damaged).

    The aligned B is B permuted, so it is rebuilt as a copy of ``template`` (model B)
    holding the cached tensors: trained endpoints and loaded zoo models alike."""
    if checkpoint_exists(path):
        try:
            tensors, meta = load_checkpoint(path, device, require_checksum=True)
            _check_meta(meta, path, spec=spec, report=dict)
            files = checkpoint_files(path)
            if meta.get("model", {}) != getattr(template, "robustpath_meta", {}):
                raise CacheError(f"{files[1]} holds another architecture", files)
            aligned = copy.deepcopy(template).to(device)
            try:
                aligned.load_state_dict(tensors)
            except RuntimeError as e:
                raise CacheError(f"{files[0]} does not fit model B ({str(e).splitlines()[0]})",
                                 files) from None
            return aligned.eval(), meta["report"]
        except CacheError as e:
            recompute_notice(e, what)
    return None


def _alignment(cfg: BenchConfig, method: str, model_a: nn.Module, model_b: nn.Module, spec: dict,
               key: str, path: Path, data: RunData, device):
    cached = _cached_alignment(cfg, spec, path, device, f"alignment {method}", model_b)
    if cached is not None:
        return (*cached, key)
    from .align import align

    n = cfg.align_samples
    loader = data_mod.Batches(data.x_train[:n], data.y_train[:n], 250, device=device)
    attack = build_attack(cfg.train_attack(), data.num_classes) if cfg.align_inputs == "adv" else None
    aligned, perm, report = align(model_a, model_b, method=method, data=loader,
                                  inputs=cfg.align_inputs if method == "activation" else "clean",
                                  attack=attack)
    report = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    # the permutation itself, so studies read it instead of re-deriving it
    save_model(path, aligned, {"report": report, "spec": spec, "perm": perm.to_dict()})
    return aligned.eval(), report, key


def pam_alignment(cfg: BenchConfig, method: str, model_a: nn.Module, model_b: nn.Module,
                  key_a: str, key_b: str, run_dir: Path, data: RunData, device,
                  progress: bool = True) -> tuple[nn.Module, dict, str]:
    """PAM from the permutation of the one-shot method ``PAM_METHODS[method]``
    (``*-none``: identity; ``*-activation``: activation matching, itself cached as its
    own stage): ``pam-*`` robustpath's robust variant (:func:`robustpath.pam.pam`,
    settings :func:`pam_config`), ``tatro-*`` Tatro et al.'s (:func:`robustpath.pam.tatro_pam`,
    settings :func:`robustpath.keys.tatro_config`; the curve it fits along the way is
    dropped like robustpath's PAM's, and it has no per-iteration resume).

    PAM runs on (A, B') with B' the start method's aligned B and the identity as
    start, which is the same as starting from that permutation of B; the returned model
    is B' permuted by PAM's result (same function as B). Its curve is then fitted from
    scratch by :func:`curve` like every other alignment, so the PAM rows of the tables
    differ from the others only by the permutation. Cached as
    ``ckpt/align/<method>-<key>``; PAM's per-iteration checkpoints go to
    ``ckpt/pam/<key>/`` while it runs (a killed run resumes at its last outer iteration). The report
    holds ``fraction_changed`` (per group, vs the start), ``losses`` (per iteration),
    ``seconds_per_outer_iteration`` and the full ``history``.
    """
    base = PAM_METHODS[method]
    start_b, base_report, base_key = alignment(cfg, base, model_a, model_b, key_a, key_b, run_dir,
                                               data, device, progress)
    pcfg = pam_settings(cfg, method)
    spec = pam_spec(cfg, method, key_a, key_b)
    key = config_hash(spec)
    path = _ckpt(run_dir, "align", f"{method}-{key}")
    with entry_lock(path):
        cached = _cached_alignment(cfg, spec, path, device, f"alignment {method}", start_b)
        if cached is not None:
            return (*cached, key)
        return _pam(cfg, method, model_a, start_b, base, base_report, spec, key, path, pcfg,
                    run_dir, data, device, progress)


def _pam(cfg, method, model_a, start_b, base, base_report, spec, key, path, pcfg, run_dir, data,
         device, progress):
    from .align import apply
    from .pam import PAMConfig, pam, tatro_pam

    if isinstance(pcfg, PAMConfig):
        res = pam(model_a, start_b, data.x_train, data.y_train, pcfg,
                  work_dir=_ckpt(run_dir, "pam", key), device=device, progress=progress)
    else:  # Tatro et al.'s: one call, nothing to resume
        res = tatro_pam(model_a, start_b, data.x_train, data.y_train, pcfg, device=device,
                        progress=progress)
    report = {**res.report(), "method": method, "start": base,
              "start_report": base_report, "perm": res.perm.to_dict()}
    aligned = apply(start_b, res.perm)
    save_model(path, aligned, {"report": report, "spec": spec})
    shutil.rmtree(_ckpt(run_dir, "pam", key), ignore_errors=True)  # resume state, now unneeded
    return aligned.eval(), report, key


# ---------------------------------------------------------------- curves
def curve(cfg: BenchConfig, kind: str, model_a: nn.Module, model_b: nn.Module, key_a: str,
          key_b: str, run_dir: Path, data: RunData, device, progress: bool = True):
    """Build the curve ``kind`` between A and (aligned) B and fit it with PGD in the
    loop unless it is a ``line``. Returns ``(curve, metrics, key)``."""
    from .curve_train import train_curve

    c = curves_mod.build_curve(kind, model_a, model_b, bends=cfg.bends).to(device)
    key = curve_key(cfg, kind, key_a, key_b)
    if not any(p.requires_grad for p in c.parameters()):  # a line has nothing to fit
        return c, {}, key
    tcfg = curve_train_config(cfg)
    folder = _ckpt(run_dir, "curves", f"{kind}-{key}")
    with entry_lock(folder):
        try:
            metrics = train_curve(c, data.x_train, data.y_train, tcfg, folder, device=device,
                                  progress=progress)
        except CacheError as e:  # a damaged final or epoch checkpoint: refit without it
            recompute_notice(e, f"{kind} curve")
            c = curves_mod.build_curve(kind, model_a, model_b, bends=cfg.bends).to(device)
            metrics = train_curve(c, data.x_train, data.y_train, tcfg, folder, device=device,
                                  progress=progress)
    return c, metrics, key


# ---------------------------------------------------------------- evaluation
def path_eval(cfg: BenchConfig, c, curve_key: str, run_dir: Path, data: RunData, device,
              progress: bool = True, desc: str = "path") -> PathResult:
    """Evaluate curve ``c`` on the t grid; cached as ``ckpt/eval/<key>.npz``. ``c`` may
    be a zero-argument function returning the curve, called only when the result is not
    cached (the zoo then loads no model on a rerun)."""
    spec = eval_spec(cfg, curve_key)
    key = config_hash(spec)
    path = _ckpt(run_dir, "eval", f"{key}.npz")
    with entry_lock(path):
        return _path_eval(cfg, c, spec, path, run_dir, data, device, progress, desc)


def cached_eval(cfg: BenchConfig, curve_key_: str, run_dir: Path, desc: str = "path",
                ) -> PathResult | None:
    """The cached evaluation of a curve, or None (absent, or damaged: then it says so)."""
    spec = eval_spec(cfg, curve_key_)
    path = _ckpt(run_dir, "eval", f"{config_hash(spec)}.npz")
    try:
        arrays = load_npz(path, spec)
        if arrays is not None:
            return PathResult.from_arrays(arrays)
    except (CacheError, KeyError) as e:
        recompute_notice(e if isinstance(e, CacheError) else CacheError(
            f"{path} lacks array {e}", (path, path.with_suffix(".json"))), f"evaluation {desc}")
    return None


def _path_eval(cfg, c, spec, path, run_dir, data, device, progress, desc) -> PathResult:
    cached = cached_eval(cfg, spec["curve"], run_dir, desc)
    if cached is not None:
        return cached
    if not isinstance(c, nn.Module):  # a deferred curve
        c = c()
    ts = t_grid(cfg.t_points)
    attack = build_attack(cfg.eval_attack(), data.num_classes)
    # seeded, so every path sees the same BN batches and perturbation draws at equal t
    bn_attack = build_attack(replace(cfg.train_attack(), seed=1), data.num_classes)
    with torch.no_grad():
        speed = curve_speed(c.params_at, ts)
    # points shared by several paths (model A at t=0, the same B at t=1) are evaluated once
    point_spec = {k: v for k, v in spec.items() if k not in ("curve", "t_points", "refine_rounds")}
    points = BoundPointCache(_ckpt(run_dir, "points", config_hash(point_spec)))
    renorm = None
    if cfg.renorm != "bn-reset":  # REPAIR or none instead of BN recomputation
        from .repair import for_path

        renorm = for_path(cfg, c.model_at, data, device)
        points = renorm.point_cache(points)

    def measure(ts_, speed_, label):
        return evaluate_path(c.model_at, ts_, data.x_test, data.y_test, attack,
                             bn_loader=None if renorm else data.train_batches(cfg, seed=0,
                                                                              device=device),
                             bn_batches=cfg.bn_batches, bn_inputs=cfg.bn_inputs,
                             bn_attack=bn_attack, speed=speed_, device=device, progress=progress,
                             desc=label, t_batch=cfg.t_batch, point_cache=points,
                             recompute_ends=cfg.bn_endpoints, renorm=renorm)

    res = measure(ts, speed, desc)

    def extra(ts_):  # refinement points, measured exactly as the grid's
        with torch.no_grad():
            sp = curve_speed(c.params_at, ts_)
        return measure(ts_, sp, f"{desc} (refine)")

    res = refine_minimum(res, extra, rounds=cfg.refine_rounds)
    save_npz(path, res.to_arrays(), spec)
    return res


# ---------------------------------------------------------------- strong evaluation
def point_setup(cfg: BenchConfig, data: RunData, device, *, recompute_ends: bool = True,
                model_at=None):
    """How :func:`path_eval` prepares a network at t (same BN batches and attack), for
    the strong stage: :class:`robustpath.strong.PointSetup`. With ``--renorm`` other than
    bn-reset, the points of the path ``model_at`` are prepared by
    :class:`robustpath.repair.PathRenorm` (:class:`robustpath.repair.RenormSetup`)."""
    from .strong import PointSetup

    if cfg.renorm != "bn-reset":
        from .repair import RenormSetup, for_path

        if model_at is None:
            raise UserError(f"--renorm {cfg.renorm} prepares a point from its path: "
                            "point_setup needs model_at")
        return RenormSetup(PointSetup(device=device, batch_size=500),
                           for_path(cfg, model_at, data, device))
    return PointSetup(bn_loader=data.train_batches(cfg, seed=0, device=device),
                      bn_batches=cfg.bn_batches, bn_inputs=cfg.bn_inputs,
                      bn_attack=build_attack(replace(cfg.train_attack(), seed=1),
                                             data.num_classes),
                      device=device, batch_size=500, recompute_ends=recompute_ends)


def strong(cfg: BenchConfig, model_at, res: PathResult, run_dir: Path, data: RunData, device,
           progress: bool = True, desc: str = "strong",
           endpoint_keys: tuple[str, str] | None = None, path_key: str | None = None):
    """The strong stage on one evaluated path (:func:`robustpath.strong.strong_path`):
    standard AutoAttack and many-restart PGD at t = 0, t = 1 and the worst t, with the
    transfer check. Points are cached in ``ckpt/strong/`` by settings and network; with
    ``seeds`` (the endpoint pair) t = 0 and t = 1 are keyed by the endpoint models, so
    the aligned and unaligned paths of a pair share them (the aligned B computes B's
    function, checked by :func:`alignment`). ``model_at``: ``t -> network`` (a curve's
    ``model_at``; called only for points not cached)."""
    from .strong import strong_path

    folder = _ckpt(run_dir, "strong", config_hash(strong_spec(cfg)))
    return strong_path(model_at, res, data.x_test, data.y_test,
                       settings=cfg.strong_settings(), eval_attack=cfg.eval_attack(),
                       setup=point_setup(cfg, data, device, recompute_ends=cfg.bn_endpoints,
                                         model_at=model_at),
                       folder=folder, num_classes=data.num_classes, progress=progress,
                       desc=desc, path_key=path_key,
                       endpoint_ids=None if endpoint_keys is None else dict(
                           zip(("a", "b"), endpoint_keys)))
