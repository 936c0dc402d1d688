"""Per-epoch checkpoints of endpoint training (:mod:`robustpath.train.loop`): save, resume.

With a ``work_dir``, the end of epoch e writes ``<work_dir>/epoch-000e.*`` (safetensors
+ JSON sidecar, JSON last, :func:`robustpath.io.store.save_checkpoint`): the model, SGD
momentum buffers, the optimizer's hyper-parameters, the scheduler's state, the torch
(CPU and CUDA) and rotation RNG states, the history and the epoch times; older epochs
are removed. :func:`resume` restores the newest complete one, so a resumed run ends
bit-for-bit where an uninterrupted run ends (same device and threads). A damaged or
foreign state (another run's ``run_key``) is reported in one line, removed, and
training starts over (:class:`Restart`). :func:`robustpath.train.loop.train_endpoint`
uses :func:`epochs_dir` and removes it once the model is saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from robustpath.io.store import (
    CacheError,
    checkpoint_exists,
    checkpoint_files,
    load_checkpoint,
    save_checkpoint,
)


def epochs_dir(path: str | Path) -> Path:
    """``<path>.epochs``: where :func:`robustpath.train.loop.train_endpoint` keeps per-epoch
    checkpoints."""
    st, _ = checkpoint_files(path)
    return st.parent / (st.name[: -len(".safetensors")] + ".epochs")


def epoch_files(work_dir: Path) -> list[Path]:
    """The complete per-epoch checkpoints in ``work_dir`` (stems), oldest first."""
    if not work_dir.is_dir():
        return []
    return [p for p in sorted(q.with_suffix("") for q in work_dir.glob("epoch-*.json"))
            if checkpoint_exists(p)]


def save_epoch(work_dir: Path, epoch: int, run_key: str, model, opt, sched, gens, history,
               epoch_times) -> None:
    """Write ``<work_dir>/epoch-<epoch>.*`` (everything :func:`resume` restores) and
    remove older epochs. ``gens``: named ``torch.Generator`` s (e.g. the rotation's)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        if st.get("momentum_buffer") is not None:
            tensors[f"opt.{i}"] = st["momentum_buffer"]
    tensors["rng.cpu"] = torch.get_rng_state()
    for name, g in gens.items():
        tensors[f"rng.{name}"] = g.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, r in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = r
    path = work_dir / f"epoch-{epoch:04d}"
    save_checkpoint(path, tensors, {
        "run_key": run_key, "epoch": epoch, "history": history, "epoch_times": epoch_times,
        "opt_groups": opt.state_dict()["param_groups"], "sched": sched.state_dict()})
    for f in work_dir.glob("epoch-*"):  # older epochs (and half-written ones) go
        if f.name.split(".")[0] != path.name:
            f.unlink(missing_ok=True)


class Restart(Exception):
    """A resume failed half-way (model or optimizer partly overwritten): rebuild."""


def resume(work_dir: Path, run_key: str, model, opt, sched, gens, device):
    """Restore the newest complete epoch in ``work_dir``; ``(epoch, history, times)``,
    ``(0, [], [])`` when there is none. A damaged or foreign one is reported in one
    line and removed, and training starts over (:class:`Restart`)."""
    done = epoch_files(work_dir)
    if not done:
        return 0, [], []
    last = done[-1]
    try:
        tensors, meta = load_checkpoint(last, "cpu", require_checksum=True)
        if meta.get("run_key") != run_key:
            raise CacheError(f"{last} belongs to another training run", checkpoint_files(last))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state = {int(k[4:]): {"momentum_buffer": v} for k, v in tensors.items()
                 if k.startswith("opt.")}
        opt.load_state_dict({"state": state, "param_groups": meta["opt_groups"]})
        for p in opt.param_groups[0]["params"]:  # keep each parameter's memory layout
            st = opt.state.get(p, {})
            if st.get("momentum_buffer") is not None:
                st["momentum_buffer"] = torch.empty_like(p).copy_(st["momentum_buffer"])
        sched.load_state_dict(meta["sched"])
        torch.set_rng_state(tensors["rng.cpu"])
        for name, g in gens.items():
            g.set_state(tensors[f"rng.{name}"])
        cuda = [v for k, v in sorted(tensors.items()) if k.startswith("rng.cuda.")]
        if cuda and device.type == "cuda":
            torch.cuda.set_rng_state_all(cuda)
        return int(meta["epoch"]), list(meta["history"]), list(meta["epoch_times"])
    except CacheError as e:
        print(f"warning: {e}; training this endpoint from its first epoch", file=sys.stderr)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        print(f"warning: {last} is unusable ({type(e).__name__}); training this endpoint from "
              "its first epoch", file=sys.stderr)
    for f in work_dir.glob("epoch-*"):
        f.unlink(missing_ok=True)
    raise Restart
