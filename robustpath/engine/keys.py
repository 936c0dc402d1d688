"""The cache keys of the core stages (endpoint, alignment, curve, evaluation) and the
strong stage's point folder; a path stage's key is built in its own module from these
(:mod:`robustpath.engine.path_stages`: curvature, plane).

A stage's output is named by :func:`robustpath.io.store.config_hash` of its spec: its own
result-relevant settings plus its inputs' keys. Settings that change how, not what
(:class:`robustpath.runtime.Runtime`: device, amp, fuse, threads, ``t_batch``,
progress) are never in a spec. Optional entries appear only when they differ from the
historical default, so caches written before they existed keep their keys.
:mod:`robustpath.engine.stages` computes and caches under these keys; sweeps name their task
nodes by them (:mod:`robustpath.engine.plan`), the zoo plans its pairs with them.
"""

from __future__ import annotations

from robustpath.align import methods
from robustpath.config import BenchConfig
from robustpath.io.store import config_hash
from robustpath.paths import curves as curves_mod
from robustpath.train.loop import TrainConfig


def endpoint_config(cfg: BenchConfig, seed: int) -> TrainConfig:
    return TrainConfig(dataset=cfg.dataset, arch=cfg.arch, width=cfg.width, seed=seed,
                       method="pgd", epochs=cfg.endpoint_epochs, batch_size=cfg.batch_size,
                       lr=cfg.lr, augment=cfg.augment, train_subset=cfg.train_subset,
                       schedule=cfg.schedule, attack_mode=cfg.attack_mode,
                       affine_degrees=cfg.affine_degrees,
                       test_subset=cfg.test_subset, attack=cfg.train_attack(),
                       eval_attack=cfg.eval_attack(), data_root=cfg.data_root, amp=cfg.amp)


def pam_config(cfg: BenchConfig):
    """The bench's PAM settings: ``cfg.pam_iters`` outer iterations, each the default
    permutation step and one curve epoch at ``cfg.curve_lr``, PGD in the loop as in
    curve training (``cfg.train_attack()``), batch size ``cfg.batch_size``."""
    from robustpath.pam import PAMConfig

    return PAMConfig(outer_iters=cfg.pam_iters, curve_epochs=1, curve_lr=cfg.curve_lr,
                     batch_size=cfg.batch_size, bends=cfg.bends, attack=cfg.train_attack(),
                     seed=0)


#: Tatro et al.'s permutation budget: 20 epochs x 391 CIFAR-10 batches of 128 (their
#: ``train_curve_pam.py`` defaults); :func:`tatro_config` scales the lr to it
TATRO_REF_STEPS = 20 * 391
TATRO_SELECT_EXAMPLES = 1000  # candidate scoring (theirs: the whole training set)


def tatro_config(cfg: BenchConfig, method: str):
    """The bench's settings for Tatro et al.'s PAM (alignments ``tatro-*``,
    :func:`robustpath.pam.tatro_pam`): ``cfg.pam_iters`` outer iterations, each 1
    permutation epoch and 1 curve epoch over the run's training subset (theirs: 1 outer
    iteration of 20 + 250 epochs), the permutation lr scaled so that lr x steps equals
    theirs (0.05 x ``TATRO_REF_STEPS``), candidates scored on the first 1,000 training
    examples (theirs: all); everything else theirs (curve lr 0.1, Nesterov 0.9, wd 5e-4,
    nu 1e3, 20 projection rounds, 32 Birkhoff-von Neumann samples). Objective: the
    method's (``clean``; ``robust``: ``cfg.train_attack()`` in the loop); batch size
    ``cfg.batch_size``."""
    from robustpath.pam import TatroPAMConfig

    robust = methods.ALIGN.get(method).objective == "robust"
    return TatroPAMConfig(objective="robust" if robust else "clean",
                          outer_iters=cfg.pam_iters, perm_epochs=1, curve_epochs=1,
                          perm_lr_ref_steps=TATRO_REF_STEPS, batch_size=cfg.batch_size,
                          select_examples=TATRO_SELECT_EXAMPLES,
                          attack=cfg.train_attack() if robust else None, seed=0)


# Every stage's cache key is the hash of the spec below: its own result-relevant settings
# plus its inputs' keys. Settings that change how, not what (device, amp, t_batch,
# progress, fuse) are never in a spec. Optional entries appear only when they differ
# from the historical default, so caches written before they existed keep their keys.
def align_spec(cfg: BenchConfig, method: str, key_a: str, key_b: str) -> dict:
    """The spec of a one-shot alignment of B (key ``key_b``) onto A (``key_a``)."""
    spec = {"method": method, "a": key_a, "b": key_b}
    spec.update({entry: getattr(cfg, f) for entry, f in methods.ALIGN.get(method).key_fields})
    if spec.get("inputs") == "adv":  # adversarial inputs: the attack that made them
        spec["attack"] = align_attack(cfg).to_dict()
    return spec


def align_attack(cfg: BenchConfig):
    """The PGD that makes activation matching's adversarial inputs (``--align-inputs
    adv``): the training attack, seeded like a merge's (:func:`merge_attack`). Unseeded,
    its random starts came from the process's global generator, so the permutation
    depended on what that process had run before. Clean matching runs no attack: its
    spec, hence its key, holds none."""
    return cfg.train_attack(seed=0)


def curve_train_config(cfg: BenchConfig):
    """How every fitted curve of ``cfg`` is trained (:class:`CurveTrainConfig`)."""
    from robustpath.paths.fit import CurveTrainConfig

    return CurveTrainConfig(epochs=cfg.curve_epochs, batch_size=cfg.batch_size, lr=cfg.curve_lr,
                            seed=0, augment=cfg.augment, attack=cfg.train_attack(), amp=cfg.amp,
                            schedule=cfg.curve_schedule, affine_degrees=cfg.affine_degrees)


def curve_spec(cfg: BenchConfig, kind: str, key_a: str, key_b: str) -> dict:
    """The spec of curve ``kind`` from A to (aligned) B; a line has nothing to fit."""
    if not curves_mod.CURVES.get(kind).fitted:
        return {"kind": kind, "a": key_a, "b": key_b}
    train = {k: v for k, v in curve_train_config(cfg).to_dict().items() if k != "amp"}
    if train["affine_degrees"] == 0.0:  # rotation added later: off, old curve keys stay
        del train["affine_degrees"]
    return {"kind": kind, "bends": cfg.bends, "a": key_a, "b": key_b, "train": train}


def eval_spec(cfg: BenchConfig, curve_key: str) -> dict:
    """The spec of a path evaluation of the curve with key ``curve_key``."""
    spec = {"curve": curve_key, "t_points": cfg.t_points, "bn_batches": cfg.bn_batches,
            "bn_inputs": cfg.bn_inputs, "attack": cfg.eval_attack().to_dict(),
            "test_subset": cfg.test_subset, "train_subset": cfg.train_subset}
    if cfg.refine_rounds:  # absent when off: grid-only caches keep their keys
        spec["refine_rounds"] = cfg.refine_rounds
    if not cfg.bn_endpoints:  # the zoo's published endpoints keep their own statistics
        spec["bn_endpoints"] = False
    return {**spec, **_renorm_spec(cfg)}


def strong_spec(cfg: BenchConfig) -> dict:
    """The spec of the strong stage's point folder (points inside are keyed by network)."""
    spec = {"bn_batches": cfg.bn_batches, "bn_inputs": cfg.bn_inputs,
            "bn_attack": cfg.train_attack().to_dict(), "test_subset": cfg.test_subset,
            "train_subset": cfg.train_subset}
    if not cfg.bn_endpoints:
        spec["bn_endpoints"] = False
    return {**spec, **_renorm_spec(cfg)}


def _renorm_spec(cfg: BenchConfig) -> dict:
    """``--renorm`` in a key: absent for bn-reset (its registry entry's ``in_key``), so
    its caches keep the keys they had before the option existed."""
    from robustpath.paths.repair import renorm_spec

    return renorm_spec(cfg)


def pam_spec(cfg: BenchConfig, method: str, key_a: str, key_b: str) -> dict:
    """The spec of PAM (``pam-*``: :func:`pam_config`; ``tatro-*``: :func:`tatro_config`)
    from its start method's alignment of B onto A: that alignment's key, PAM's settings,
    the training subset."""
    base_key = align_key(cfg, methods.ALIGN.get(method).pam_start, key_a, key_b)
    return {"method": method, "a": key_a, "b": base_key,
            "pam": pam_settings(cfg, method).to_dict(), "train_subset": cfg.train_subset}


def pam_settings(cfg: BenchConfig, method: str):
    """The settings of PAM method ``method``: :func:`tatro_config` or :func:`pam_config`."""
    return tatro_config(cfg, method) if methods.ALIGN.get(method).pam == "tatro" else pam_config(cfg)


def align_key(cfg: BenchConfig, method: str, key_a: str, key_b: str) -> str:
    """The key of any alignment method (one-shot or PAM) of B onto A."""
    if not methods.ALIGN.get(method).one_shot:
        return config_hash(pam_spec(cfg, method, key_a, key_b))
    return config_hash(align_spec(cfg, method, key_a, key_b))


def curve_key(cfg: BenchConfig, kind: str, key_a: str, key_b: str) -> str:
    return config_hash(curve_spec(cfg, kind, key_a, key_b))


def eval_key(cfg: BenchConfig, curve_key_: str) -> str:
    return config_hash(eval_spec(cfg, curve_key_))


# ---------------------------------------------------------------- the soup (N models)
def merge_spec(cfg: BenchConfig, method: str, endpoint_keys: list[str], seed: int) -> dict:
    """The spec of N endpoints (keys in order) merged into one basin by ``method``
    (:data:`robustpath.soup.merge.MERGERS`; ``seed``: MergeMany's visiting order), with
    the settings the method's alignment reads (activation matching: inputs, samples and,
    on adversarial inputs, the attack that made them), as :func:`align_spec` has them."""
    spec = {"what": "merge", "method": method, "endpoints": list(endpoint_keys), "seed": seed}
    spec.update({entry: getattr(cfg, f) for entry, f in methods.ALIGN.get(method).key_fields})
    if spec.get("inputs") == "adv":
        spec["attack"] = merge_attack(cfg).to_dict()
    return spec


def merge_attack(cfg: BenchConfig):
    """The PGD that makes a merge's adversarial matching inputs: the training attack,
    seeded (unseeded, its random starts came from the process's global generator, so a
    merge depended on what that process had run before)."""
    return cfg.train_attack(seed=0)


def soup_point_spec(cfg: BenchConfig, merge_key: str) -> dict:
    """How every network of a soup run is measured (:class:`robustpath.soup.triangle.PointEval`):
    BatchNorm re-estimated on ``bn_batches`` training batches (PGD seed 1 on adv inputs),
    the evaluation attack on the test subset; a renormalisation other than bn-reset
    (REPAIR) depends on the merged models, so it carries ``merge_key`` too."""
    from robustpath.paths.repair import RENORMS

    spec = {"dataset": cfg.dataset, "bn_batches": cfg.bn_batches, "bn_inputs": cfg.bn_inputs,
            "bn_attack": cfg.train_attack(seed=1).to_dict(), "attack": cfg.eval_attack().to_dict(),
            "test_subset": cfg.test_subset, "train_subset": cfg.train_subset}
    if RENORMS.get(cfg.renorm).in_key:  # absent for bn-reset: its caches keep their keys
        spec.update(renorm=cfg.renorm, merge=merge_key)
    return spec


def soup_spec(cfg: BenchConfig, merge_key: str, what: str, **extra) -> dict:
    """The spec of one soup measurement ``what`` (``soup``: the uniform average;
    ``triangle`` with ``grid``, ``vertices``; ``line`` with ``pair``, ``grid``) of the
    models merged under ``merge_key``."""
    return {"merge": merge_key, "point": config_hash(soup_point_spec(cfg, merge_key)),
            "what": what, **extra}
