"""Run folders, atomic writes, safetensors checkpoints with JSON sidecars, stage caching.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`
  write to a temporary file in the same folder and ``os.replace`` it, so a reader
  never sees a half-written file and a crash never destroys an earlier result. The
  temporary is created new (``O_EXCL``) and the rename replaces a link rather than
  writing through it, so a symlink planted at the target never redirects a write.
* :func:`save_checkpoint` writes ``<path>.safetensors`` (tensors only, no pickle) and
  ``<path>.json`` (config, versions, git revision, metrics, and ``content``: the
  sha256, size and tensor shapes of the ``.safetensors``). The JSON is written last
  and doubles as the "complete" marker. The suffix is appended literally
  (``runs/eps0.1`` -> ``runs/eps0.1.safetensors``), never substituted.
* :func:`load_checkpoint` verifies ``content`` before returning anything; a damaged,
  truncated, swapped or foreign file raises :class:`CacheError` (a one-line
  :class:`UserError` naming the files), which the stages catch to recompute.
* Files are created with the permissions the umask allows (``0666 & ~umask``), like
  ``open()`` would, not ``mkstemp``'s 0600.
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

from robustpath.errors import UserError


class CacheError(UserError):
    """A stored artifact that cannot be trusted (unreadable, truncated, checksum or shape
    mismatch, sidecar of another kind). ``files`` are the paths to delete before the
    stage that wrote them is recomputed."""

    def __init__(self, message: str, files: tuple[Path, ...] = ()):
        super().__init__(message)
        self.files = tuple(Path(f) for f in files)

    def discard(self) -> None:
        """Delete the damaged files (so the stage recomputes them)."""
        for f in self.files:
            with _suppress():
                f.unlink()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(old)
    return old


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        # mkstemp creates 0600; a result file must be as readable as the umask allows
        os.fchmod(fd, 0o666 & ~current_umask())
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
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        # "-dirty" is about the code: a run that rewrites committed results (results/,
        # studies/results/) is still a run of a clean revision
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results", ":(exclude)studies/results"],
                               cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python and the packages that affect results.

    A package the process has imported reports its ``__version__`` (with its local tag,
    e.g. ``2.14.1+cu130``); one it has not is read from its installed metadata (no local
    tag), not imported: importing torchvision and torchattacks took 7-10 s on a loaded
    2-core machine, inside the first checkpoint write (a kill window, issue 17)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "torchvision", "torchattacks", "numpy", "scipy", "robustpath"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def portable_argv(argv: list[str]) -> list[str]:
    """``argv`` without the machine's own paths: an absolute path inside the repository
    made relative to it (``/home/me/robustpath/robustpath/bench.py`` ->
    ``robustpath/bench.py``), the script of a copy elsewhere named from its package
    (``/tmp/regen/robustpath/bench.py`` -> ``robustpath/bench.py``) or by its file name;
    other arguments as given."""
    root = Path(__file__).resolve().parents[2]
    out = []
    for i, arg in enumerate(argv):
        p = Path(arg)
        if p.is_absolute():
            try:
                arg = p.resolve().relative_to(root).as_posix()
            except (ValueError, OSError):
                if i == 0:  # the script: from its package folder on, or its name
                    parts = p.parts
                    k = max((j for j, part in enumerate(parts) if part == "robustpath"),
                            default=len(parts) - 1)
                    arg = Path(*parts[k:]).as_posix()
        out.append(arg)
    return out


def provenance() -> dict[str, Any]:
    """Versions, git revision and the command line (:func:`portable_argv`: no absolute
    path of the machine that ran it)."""
    return {"versions": versions(), "git": git_revision(), "argv": portable_argv(sys.argv)}


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(<path>.safetensors, <path>.json)``: suffixes appended literally, so
    ``X/eps0.1`` stays ``X/eps0.1.*``; a path already ending in ``.safetensors`` or
    ``.json`` names the same pair."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.parent / f"{path.name}.safetensors", path.parent / f"{path.name}.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_summary(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    """``name -> [shape, dtype]``: what a checkpoint must hold, for verification."""
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in tensors.items()}


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``<path>.safetensors`` then ``<path>.json`` (meta + provenance + content
    checksum), atomically."""
    from safetensors.torch import save

    st, js = checkpoint_files(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    blob = save(flat)
    content = {"sha256": sha256_bytes(blob), "bytes": len(blob), "tensors": tensor_summary(flat)}
    sidecar = {**meta, "provenance": provenance(), "content": content}  # before any write:
    atomic_write_bytes(st, blob)  # the two writes follow each other with nothing slow between
    atomic_write_json(js, sidecar)


def checkpoint_exists(path: str | Path) -> bool:
    return all(f.is_file() for f in checkpoint_files(path))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    require_checksum: bool = False) -> tuple[dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``.

    Verifies the sidecar's ``content`` (sha256 of the file, tensor names, shapes and
    dtypes) when present; ``require_checksum`` also refuses files without one (caches
    written before checksums existed). Raises :class:`CacheError` on any mismatch.
    """
    from safetensors.torch import load

    st, js = checkpoint_files(path)
    if not (st.is_file() and js.is_file()):
        raise UserError(f"checkpoint not found: {st}")
    files = (st, js)
    try:
        blob = st.read_bytes()
        meta = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"checkpoint {st} is unreadable ({type(e).__name__})", files) from None
    if not isinstance(meta, dict):
        raise CacheError(f"{js} is not a checkpoint sidecar (a JSON {type(meta).__name__})", files)
    content = meta.get("content")
    if content is None and require_checksum:
        raise CacheError(f"{st} has no checksum (written by an older version)", files)
    if content is not None:
        if not isinstance(content, dict) or content.get("sha256") != sha256_bytes(blob):
            size = f"{len(blob)} of {content.get('bytes')} bytes" if isinstance(content, dict) else ""
            raise CacheError(f"{st} does not match its checksum ({size}; damaged or replaced)", files)
    try:
        tensors = load(blob)
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise CacheError(f"checkpoint {st} is unreadable ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else ''})", files) from None
    if content is not None and content.get("tensors") != tensor_summary(tensors):
        raise CacheError(f"{st} does not hold the tensors its sidecar lists", files)
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


def save_model(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save a model's state dict (parameters and buffers) plus its architecture meta."""
    arch = getattr(model, "robustpath_meta", {})
    save_checkpoint(path, model.state_dict(), {"model": arch, **meta})


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               require_checksum: bool = False, expect: dict | None = None,
               ) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` (architecture from the sidecar).

    ``expect`` (e.g. ``{"arch": "cnn-small", "width": 1.0}``) must match the sidecar's
    architecture entry; a mismatch, an unknown architecture or tensors that do not fit
    it raise :class:`CacheError`.
    """
    from robustpath import models

    tensors, meta = load_checkpoint(path, device, require_checksum=require_checksum)
    files = checkpoint_files(path)
    arch = meta.get("model")
    if not isinstance(arch, dict) or "arch" not in arch:
        raise CacheError(f"checkpoint {files[0]} does not name its architecture", files)
    for k, v in (expect or {}).items():
        if arch.get(k) != v:
            raise CacheError(f"checkpoint {files[0]} holds a {k} {arch.get(k)!r} model, "
                             f"expected {v!r}", files)
    try:
        model = models.create(arch["arch"], arch.get("dataset", "fashion-mnist"),
                              arch.get("width", 1.0))
        model.load_state_dict(tensors)
    except (UserError, RuntimeError, TypeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CacheError(f"checkpoint {files[0]} does not fit its architecture ({first})",
                         files) from None
    return model.to(device), meta


def check_writable(run_dir: Path) -> None:
    """Fail early, with one line, when the run folder cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # a fresh file (O_EXCL): a planted ".write-probe" link is never written through
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output folder {run_dir} is not writable ({e.strerror or e})") from None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
