"""The alignment stage: permute model B's hidden units onto A's, cached as
``<run>/ckpt/align/<method>-<key>``.

:func:`alignment` aligns with one method of :mod:`robustpath.align.methods` (``none``,
``activation``, ``weight``: :func:`robustpath.align.align`; ``pam-*`` / ``tatro-*``:
:func:`pam_alignment`) and checks that the aligned B computes B's function. Keys:
:func:`robustpath.engine.keys.align_spec` and :func:`robustpath.engine.keys.pam_spec`. Split out of
:mod:`robustpath.engine.stages`, which re-exports every name here.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch.nn as nn

from robustpath import data as data_mod
from robustpath.attacks.base import build_attack
from robustpath.config import PAM_METHODS, BenchConfig
from robustpath.engine.keys import align_attack, align_spec, pam_settings, pam_spec
from robustpath.engine.stages_common import RunData, _check_meta, _ckpt
from robustpath.io.cache import recompute_notice
from robustpath.io.lock import entry_lock
from robustpath.io.store import (
    CacheError,
    checkpoint_exists,
    checkpoint_files,
    config_hash,
    load_checkpoint,
    save_model,
)

ALIGN_SAMPLES = 2000  # BenchConfig.align_samples default (kept for studies)


def alignment(cfg: BenchConfig, method: str, model_a: nn.Module, model_b: nn.Module,
              key_a: str, key_b: str, run_dir: Path, data: RunData, device,
              progress: bool = True) -> tuple[nn.Module, dict, str]:
    """Align model B onto A with ``method`` (:func:`_align_any`), then check on the first
    256 test examples that the aligned B computes B's logits
    (:func:`robustpath.align.equivalence.check_same_function`; an error above tolerance). The
    check is recorded in the report as ``equivalence``. Returns ``(aligned_b, report, key)``."""
    from robustpath.align.equivalence import check_same_function

    aligned, report, key = _align_any(cfg, method, model_a, model_b, key_a, key_b, run_dir,
                                      data, device, progress)
    report = {**report, "equivalence": check_same_function(
        model_b, aligned, data.x_test, what=f"alignment {method} of seed model B")}
    return aligned, report, key


def _align_any(cfg: BenchConfig, method: str, model_a: nn.Module, model_b: nn.Module,
               key_a: str, key_b: str, run_dir: Path, data: RunData, device,
               progress: bool = True) -> tuple[nn.Module, dict, str]:
    """Align model B onto A with ``method`` (none | activation | weight | pam-* | tatro-*:
    :mod:`robustpath.align.methods`).

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
    from robustpath.align import align

    n = cfg.align_samples
    loader = data_mod.Batches(data.x_train[:n], data.y_train[:n], 250, device=device)
    attack = (build_attack(align_attack(cfg), data.num_classes) if cfg.align_inputs == "adv"
              else None)
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
    settings :func:`robustpath.engine.keys.pam_config`), ``tatro-*`` Tatro et al.'s
    (:func:`robustpath.pam.tatro_pam`, settings :func:`robustpath.engine.keys.tatro_config`; the
    curve it fits along the way is dropped like robustpath's PAM's, and it has no
    per-iteration resume).

    PAM runs on (A, B') with B' the start method's aligned B and the identity as
    start, which is the same as starting from that permutation of B; the returned model
    is B' permuted by PAM's result (same function as B). Its curve is then fitted from
    scratch by :func:`robustpath.engine.stages.curve` like every other alignment, so the PAM rows
    of the tables differ from the others only by the permutation. Cached as
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
    from robustpath.align import apply
    from robustpath.pam import PAMConfig, pam, tatro_pam

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

