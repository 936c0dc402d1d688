"""Run folders, atomic writes, safetensors checkpoints with JSON sidecars, stage caching.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`
  write to a temporary file in the same folder and ``os.replace`` it, so a reader
  never sees a half-written file and a crash never destroys an earlier result.
* :func:`save_checkpoint` writes ``<path>.safetensors`` (tensors only, no pickle) and
  ``<path>.json`` (config, versions, git revision, metrics). The JSON is written last
  and doubles as the "complete" marker.
* :func:`config_hash` is the stable hash of a resolved config that names a stage's
  output folder, so identical stages are found and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "value"):
        return o.value
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(cfg, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python and the packages that affect results."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "torchvision", "torchattacks", "numpy", "scipy", "robustpath"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except Exception:
                continue
        out[name] = getattr(mod, "__version__", "?")
    return out


def provenance() -> dict[str, Any]:
    return {"versions": versions(), "git": git_revision(), "argv": list(sys.argv)}


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``<path>.safetensors`` then ``<path>.json`` (meta + provenance), atomically."""
    from safetensors.torch import save

    path = Path(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path.with_suffix(".safetensors"), save(flat))
    atomic_write_json(path.with_suffix(".json"), {**meta, "provenance": provenance()})


def checkpoint_exists(path: str | Path) -> bool:
    path = Path(path)
    return path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not checkpoint_exists(path):
        raise UserError(f"checkpoint not found: {path.with_suffix('.safetensors')}")
    try:
        tensors = load_file(str(path.with_suffix(".safetensors")), device=str(device))
        meta = json.loads(path.with_suffix(".json").read_text())
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    return tensors, meta


def save_model(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save a model's state dict (parameters and buffers) plus its architecture meta."""
    arch = getattr(model, "robustpath_meta", {})
    save_checkpoint(path, model.state_dict(), {"model": arch, **meta})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` (architecture from the sidecar)."""
    from . import models

    tensors, meta = load_checkpoint(path, device)
    arch = meta.get("model") or {}
    if "arch" not in arch:
        raise UserError(f"checkpoint {path} does not name its architecture")
    model = models.create(arch["arch"], arch.get("dataset", "fashion-mnist"), arch.get("width", 1.0))
    model.load_state_dict(tensors)
    return model.to(device), meta
