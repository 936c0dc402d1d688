"""The benchmark's stages, each a function of (config, input files) -> output files.

Every stage names its output by a hash of its resolved configuration *and* of its
inputs' hashes, stores it under ``<run>/ckpt/<stage>/``, and returns the stored
result when it already exists. A second identical run therefore does no work, and
a run killed inside any stage resumes there (curve training also resumes inside
the stage, from its last epoch checkpoint). A cluster executor can run these
functions as separate jobs: they only share files.

Stages: :func:`endpoint` (adversarial training; :func:`endpoint_from_file` reads a
user's checkpoint instead), alignment (:func:`robustpath.engine.stages_align.alignment`;
PAM: :func:`robustpath.engine.stages_align.pam_alignment`), :func:`curve` (fit with PGD
in the loop; ``line`` needs no fitting), :func:`path_eval`
(per-example results along t) and :func:`strong` (AutoAttack, many-restart PGD and the
transfer check at the ends and the worst t, one path at a time; the engine's strong
nodes attack one point each with :func:`strong_attacker`). The path stages' own modules
hold the others (:mod:`robustpath.engine.path_stages`). Their keys are :mod:`robustpath.engine.keys`; the
run's data and the checkpoint helpers they share are :mod:`robustpath.engine.stages_common`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from robustpath.attacks.base import build_attack
from robustpath.config import BenchConfig
from robustpath.engine.keys import (
    curve_key,
    curve_train_config,
    endpoint_config,
    eval_spec,
    strong_spec,
)
from robustpath.engine.stages_common import RunData, _check_meta, _ckpt  # noqa: F401  (re-exported)
from robustpath.errors import UserError
from robustpath.io.cache import BoundPointCache, load_npz, recompute_notice, save_npz
from robustpath.io.lock import entry_lock
from robustpath.io.store import (
    CacheError,
    checkpoint_exists,
    config_hash,
    load_model,
)
from robustpath.paths import curves as curves_mod
from robustpath.paths.evaluate import PathResult, curve_speed, evaluate_path, refine_minimum, t_grid
from robustpath.train.loop import train_endpoint


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


def endpoint_from_file(cfg: BenchConfig, path: str | Path, device, data: RunData | None = None,
                       template: nn.Module | None = None) -> tuple[nn.Module, dict, str]:
    """An endpoint read from a user's file instead of trained (``--endpoints``): a
    ``robustpath.train.loop`` checkpoint, or with ``cfg.arch = "pkg.module:Factory"`` a
    ``.pt`` / ``.safetensors`` state dict (:mod:`robustpath.engine.endpoint_files`; a pickle is
    never executed). Returns ``(model, metrics, key)`` like :func:`endpoint`; ``key``
    hashes the file's sha256 with the architecture. Nothing is cached: the file is the
    cache. ``template``: a module copied instead of calling the factory (in-memory models
    of ``rp.benchmark``)."""
    from robustpath import data as data_mod
    from robustpath.engine.endpoint_files import load_endpoint

    classes = data.num_classes if data is not None else data_mod.info(cfg.dataset).num_classes
    return load_endpoint(path, cfg.arch, cfg.dataset, classes, cfg.width, device,
                         template=template)


def _arch(cfg: BenchConfig) -> dict:
    return {"arch": cfg.arch, "dataset": cfg.dataset, "width": float(cfg.width)}


# ---------------------------------------------------------------- curves
def curve(cfg: BenchConfig, kind: str, model_a: nn.Module, model_b: nn.Module, key_a: str,
          key_b: str, run_dir: Path, data: RunData, device, progress: bool = True,
          desc: str | None = None):
    """Build the curve ``kind`` between A and (aligned) B and fit it with PGD in the
    loop unless it is a ``line``. Returns ``(curve, metrics, key)``. ``desc`` names
    the fit's progress bars (default ``curve <kind>``)."""
    from robustpath.paths.fit import train_curve

    c = curves_mod.build_curve(kind, model_a, model_b, bends=cfg.bends).to(device)
    key = curve_key(cfg, kind, key_a, key_b)
    if not any(p.requires_grad for p in c.parameters()):  # a line has nothing to fit
        return c, {}, key
    tcfg = curve_train_config(cfg)
    folder = _ckpt(run_dir, "curves", f"{kind}-{key}")
    with entry_lock(folder):
        try:
            metrics = train_curve(c, data.x_train, data.y_train, tcfg, folder, device=device,
                                  progress=progress, desc=desc or f"curve {kind}")
        except CacheError as e:  # a damaged final or epoch checkpoint: refit without it
            recompute_notice(e, f"{kind} curve")
            c = curves_mod.build_curve(kind, model_a, model_b, bends=cfg.bends).to(device)
            metrics = train_curve(c, data.x_train, data.y_train, tcfg, folder, device=device,
                                  progress=progress, desc=desc or f"curve {kind}")
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
    from robustpath.paths.repair import RENORMS, for_path

    if not RENORMS.get(cfg.renorm).recomputes_bn:  # REPAIR or none instead of BN recomputation
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
    the strong stage: :class:`robustpath.strong.stage.PointSetup`. With ``--renorm`` other than
    bn-reset, the points of the path ``model_at`` are prepared by
    :class:`robustpath.paths.repair.PathRenorm` (:class:`robustpath.paths.repair.RenormSetup`)."""
    from robustpath.paths.repair import RENORMS, RenormSetup, for_path
    from robustpath.strong.stage import PointSetup

    if not RENORMS.get(cfg.renorm).recomputes_bn:
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
    """The strong stage on one evaluated path (:func:`robustpath.strong.stage.strong_path`):
    standard AutoAttack and many-restart PGD at t = 0, t = 1 and the worst t, with the
    transfer check. Points are cached in ``ckpt/strong/`` by settings and network; with
    ``seeds`` (the endpoint pair) t = 0 and t = 1 are keyed by the endpoint models, so
    the aligned and unaligned paths of a pair share them (the aligned B computes B's
    function, checked by :func:`alignment`). ``model_at``: ``t -> network`` (a curve's
    ``model_at``; called only for points not cached)."""
    from robustpath.strong.stage import strong_path

    folder = _ckpt(run_dir, "strong", config_hash(strong_spec(cfg)))
    return strong_path(model_at, res, data.x_test, data.y_test,
                       settings=cfg.strong_settings(), eval_attack=cfg.eval_attack(),
                       setup=point_setup(cfg, data, device, recompute_ends=cfg.bn_endpoints,
                                         model_at=model_at),
                       folder=folder, num_classes=data.num_classes, progress=progress,
                       desc=desc, path_key=path_key,
                       endpoint_ids=None if endpoint_keys is None else dict(
                           zip(("a", "b"), endpoint_keys)))


def strong_attacker(cfg: BenchConfig, model_at, run_dir: Path, data: RunData, device,
                    progress: bool = True, desc: str = "strong",
                    endpoint_keys: tuple[str, str] | None = None, path_key: str | None = None):
    """What :func:`strong` attacks a path's points with
    (:class:`robustpath.strong.stage.PointAttacker`, same folder, settings and point
    preparation), for the engine's strong nodes that attack one point each."""
    from robustpath.strong.stage import PointAttacker

    return PointAttacker(model_at, data.x_test, data.y_test, settings=cfg.strong_settings(),
                         eval_attack=cfg.eval_attack(),
                         setup=point_setup(cfg, data, device, recompute_ends=cfg.bn_endpoints,
                                           model_at=model_at),
                         folder=_ckpt(run_dir, "strong", config_hash(strong_spec(cfg))),
                         num_classes=data.num_classes, progress=progress, desc=desc,
                         endpoint_ids=None if endpoint_keys is None else dict(
                             zip(("a", "b"), endpoint_keys)), path_key=path_key)
