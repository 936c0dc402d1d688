"""Verified array caches (evaluation, plane, per-point results).

Checkpoints verify themselves (:func:`robustpath.io.store.load_checkpoint`); this module
does the same for the ``.npz`` caches of :mod:`robustpath.engine.stages`:

* :func:`save_npz` writes ``<name>.npz`` and then its sidecar ``<name>.json`` holding
  the stage's spec (the key the result was computed for), the sha256 of the ``.npz``
  and each array's shape and dtype;
* :func:`load_npz` returns the arrays only when the sidecar's spec equals the
  requested one (so two swapped cache files are refused), the checksum matches and
  the arrays are those listed; otherwise it raises
  :class:`robustpath.io.store.CacheError`, which the stage reports in one line
  (:func:`recompute_notice`) before recomputing.
* :func:`cached_npz` is the load-or-compute routine around them, under the entry's
  lock (the soup's stages);
* :class:`BoundPointCache` is :class:`robustpath.paths.evaluate.PointCache` with each entry
  bound to its key: an entry stores the key it was computed for, and a swapped or
  garbled entry is recomputed.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from robustpath.io.lock import entry_lock
from robustpath.io.store import (
    CacheError,
    atomic_write_bytes,
    atomic_write_json,
    sha256_bytes,
    to_json,
)
from robustpath.paths.evaluate import ARRAYS, PointCache


def _summary(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype)] for k, v in sorted(arrays.items())}


def _canon(obj) -> object:
    """``obj`` as it reads back from JSON (tuples -> lists, floats as stored)."""
    return json.loads(to_json(obj))


def save_npz(path: str | Path, arrays: dict[str, np.ndarray], spec: dict) -> None:
    """Write ``path`` (.npz, compressed) and its sidecar (.json) last, both atomically."""
    path = Path(path)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    blob = buf.getvalue()
    atomic_write_bytes(path, blob)
    atomic_write_json(path.with_suffix(".json"), {
        "spec": spec, "sha256": sha256_bytes(blob), "bytes": len(blob),
        "arrays": _summary(arrays)})


def load_npz(path: str | Path, spec: dict) -> dict[str, np.ndarray] | None:
    """The arrays cached at ``path`` for ``spec``; None when there is no complete
    entry (never written, or killed before its sidecar). Raises CacheError when the
    entry exists but cannot be trusted."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        return None
    files = (path, side)
    if not side.is_file():
        raise CacheError(f"{path} has no sidecar {side.name} (unfinished or foreign)", files)
    try:
        blob = path.read_bytes()
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{path} is unreadable ({type(e).__name__})", files) from None
    if not isinstance(meta, dict) or meta.get("spec") != _canon(spec):
        raise CacheError(f"{path} was computed for another configuration (moved or swapped "
                         "cache file)", files)
    if meta.get("sha256") != sha256_bytes(blob):
        raise CacheError(f"{path} does not match its checksum (damaged or replaced)", files)
    try:
        with np.load(io.BytesIO(blob)) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CacheError(f"{path} is unreadable ({type(e).__name__})", files) from None
    if meta.get("arrays") != _canon(_summary(arrays)):
        raise CacheError(f"{path} does not hold the arrays its sidecar lists", files)
    return arrays


def recompute_notice(err: CacheError, what: str) -> None:
    """One line on stderr, then the damaged files are deleted for recomputation."""
    print(f"warning: {err}; recomputing {what}", file=sys.stderr)
    err.discard()


def cached_npz(path: str | Path, spec: dict, compute, what: str) -> dict[str, np.ndarray]:
    """``load_npz(path, spec)``, or ``compute()`` saved there, under the entry's lock
    (:func:`robustpath.io.lock.entry_lock`: a second process waits, then loads). A moved,
    damaged or foreign entry is reported in one line (``what`` names it) and recomputed."""
    path = Path(path)
    with entry_lock(path):
        try:
            hit = load_npz(path, spec)
            if hit is not None:
                return hit
        except CacheError as e:
            recompute_notice(e, what)
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        save_npz(path, arrays, spec)
    return arrays


class BoundPointCache(PointCache):
    """A :class:`PointCache` whose entries carry the key they were computed for (array
    ``key``): a swapped, garbled or foreign entry is a miss and is recomputed."""

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.folder / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                if "key" not in z.files:
                    return None  # written before entries were bound: recomputed, quietly
                if str(z["key"]) != key:
                    raise ValueError("bound to another point")
                return {k: z[k] for k in ARRAYS}
        except Exception as e:  # noqa: BLE001  (np.load raises many types on damage)
            print(f"warning: point cache {path} is unusable ({type(e).__name__}); "
                  "recomputing the point", file=sys.stderr)
            return None

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, key=np.array(key), **{k: arrays[k] for k in ARRAYS})
        atomic_write_bytes(self.folder / f"{key}.npz", buf.getvalue())
