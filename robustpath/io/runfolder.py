"""Atomic run folders: a run's outputs become visible together, or not at all.

A run folder holds the run's outputs (``config.json``, ``records.csv``,
``examples.npz``, the JSON reports, ``tables/``, ``plots/``) beside its caches
(``ckpt/``). :func:`robustpath.io.outputs.write_run` writes a new run's outputs into
``<run>/.staging/`` (:func:`begin`), then :func:`commit`:

1. ``.staging/manifest.json`` is written last: the commit point. It lists every
   output with the sha256 of the primary ones (the run's sources, written before
   :func:`robustpath.report.run.build_report`; not what ``report`` rebuilds from them:
   tables, plots, ``report.{md,html}``);
2. the outputs are moved into the run folder one ``os.replace`` at a time, outputs of
   the old run that the new one lacks are deleted, and ``manifest.json`` is moved
   last; ``.staging/`` is removed.

A kill before step 1 leaves the old run untouched (the half-filled staging folder is
discarded by :func:`recover`); a kill during step 2 is rolled forward by
:func:`recover`, which every writer and ``report`` call under the run lock before
reading. :func:`verify` (``report``) checks the primary files against
``manifest.json``, so a folder mixing two runs, or an edited ``records.csv``, is
refused in one line. Folders without a manifest (written before it existed, or by
hand) are read as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from robustpath.errors import UserError
from robustpath.io.store import atomic_write_json, sha256_file

STAGING = ".staging"
MANIFEST = "manifest.json"
# a run's primary outputs, for cleaning up after a folder written before manifests existed
LEGACY_PRIMARY = ("config.json", "provenance.json", "command.txt", "endpoints.json",
                  "alignment.json", "curves.json", "records.csv", "examples.npz", "plane.json")


def inside(root: Path, rel: object, source: Path) -> Path:
    """``root / rel`` for a relative path ``rel`` read from ``source`` (a manifest, a
    sweep file), refused in one line unless it stays inside ``root``: paths in a run
    folder are data (a downloaded, tampered folder must not reach files outside it).
    The parent is resolved (a symlinked subfolder pointing out is refused); the last
    component is not, since it is only ever replaced or unlinked, never written
    through."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise UserError(f"{source} lists {rel!r}, which is not a file name; refusing to "
                        f"touch anything (a damaged or tampered folder: check {source})")
    parts = Path(rel).parts
    target = root / rel
    if Path(rel).is_absolute() or ".." in parts or not _within(root, target.parent):
        raise UserError(f"{source} lists {rel!r}, outside {root}; refusing to touch anything "
                        f"(a damaged or tampered folder: check {source})")
    return target


def _within(root: Path, path: Path) -> bool:
    r, p = root.resolve(), path.resolve()
    return p == r or r in p.parents


def _check_paths(run_dir: Path, folder: Path, m: dict) -> None:
    """Every path of manifest ``m`` (of ``folder``: the run or its staging) stays inside
    ``folder`` and inside ``run_dir``; else a one-line UserError before any file moves."""
    derived = m.get("derived", [])
    if not isinstance(derived, list):
        raise UserError(f"{folder / MANIFEST}: 'derived' is not a list (tampered?)")
    for rel in [*m["files"], *derived]:
        inside(folder, rel, folder / MANIFEST)
        inside(run_dir, rel, folder / MANIFEST)


# subfolders of a run that its commands write into: a symlink there would redirect
# every write (report rebuilds tables/ and plots/ in place)
SUBFOLDERS = (STAGING, "tables", "plots", "cards", "aggregate", "cells")


def check_links(run_dir: Path) -> None:
    """Refuse, in one line, a run folder whose written subfolders are symbolic links."""
    for name in SUBFOLDERS:
        if (run_dir / name).is_symlink():
            raise UserError(f"{run_dir / name} is a symbolic link; a run folder's subfolders "
                            "must be real folders (remove the link)")


def is_run(folder: str | Path) -> bool:
    """Whether ``folder`` looks like a run (or sweep) folder that a command may lock,
    recover and write: it holds a manifest (committed or staged) or a run's primary
    files. ``report`` on anything else touches nothing."""
    folder = Path(folder)
    return any((folder / f).is_file() for f in
               (MANIFEST, f"{STAGING}/{MANIFEST}", "records.csv", "config.json", "sweep.json"))


def _read_manifest(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
        return None
    return m


def outputs(folder: Path) -> list[str]:
    """Every file of a staged run, relative, manifest excluded."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def begin(run_dir: str | Path) -> Path:
    """A fresh, empty staging folder inside ``run_dir`` (call under the run lock)."""
    stage = Path(run_dir) / STAGING
    if stage.is_symlink():  # rmtree refuses links; the link itself goes, not its target
        stage.unlink()
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def commit(run_dir: str | Path, primary: list[str]) -> None:
    """Commit the staged run (manifest last), then move it into place. ``primary``: the
    staged files that are the run's sources (hashed); the others are derived (listed)."""
    from robustpath.io.lock import check_held

    run_dir = Path(run_dir)
    check_held(run_dir)  # a lock deleted during the run: another writer may be in here
    stage = run_dir / STAGING
    files, derived = {}, []
    for rel in outputs(stage):
        if rel in primary:
            files[rel] = sha256_file(stage / rel)
        else:
            derived.append(rel)
    atomic_write_json(stage / MANIFEST, {"format": 1, "files": files, "derived": derived})
    _roll_forward(run_dir)


def _roll_forward(run_dir: Path) -> None:
    stage = run_dir / STAGING
    new = _read_manifest(stage)
    old = _read_manifest(run_dir) or {"files": dict.fromkeys(LEGACY_PRIMARY), "derived": []}
    check_links(run_dir)
    _check_paths(run_dir, stage, new)  # all paths first: nothing moves unless all are inside
    _check_paths(run_dir, run_dir, old)
    keep = set(new["files"]) | set(new.get("derived", []))
    for rel in sorted(keep):
        src = stage / rel
        if src.is_file():  # absent: moved by an earlier, interrupted roll-forward
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, run_dir / rel)
    for rel in set(old["files"]) | set(old.get("derived", [])):
        if rel not in keep:
            (run_dir / rel).unlink(missing_ok=True)
    os.replace(stage / MANIFEST, run_dir / MANIFEST)
    shutil.rmtree(stage, ignore_errors=True)


def recover(run_dir: str | Path) -> str | None:
    """Finish or discard an interrupted commit (call under the run lock). Returns
    ``"rolled forward"``, ``"discarded"`` or None (nothing to do)."""
    run_dir = Path(run_dir)
    stage = run_dir / STAGING
    check_links(run_dir)
    old, new = _read_manifest(run_dir), _read_manifest(stage)
    if old is not None:  # checked before any work, so a run never starts into such a folder
        _check_paths(run_dir, run_dir, old)
    if new is not None:
        _check_paths(run_dir, stage, new)
    for folder in (run_dir, run_dir / "tables", run_dir / "plots"):  # a killed report's
        for f in folder.glob(".*.tmp"):                                # temporaries
            f.unlink(missing_ok=True)
    if not stage.is_dir():
        return None
    if new is not None:
        _roll_forward(run_dir)
        return "rolled forward"
    shutil.rmtree(stage, ignore_errors=True)
    return "discarded"


def verify(run_dir: str | Path) -> dict | None:
    """Check a run folder's primary files against its manifest; returns the manifest
    (None for a folder without one). Raises a one-line UserError on any mismatch."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists():
        return None
    m = _read_manifest(run_dir)
    if m is None:
        raise UserError(f"{run_dir / MANIFEST} is corrupt; rerun the benchmark into this folder")
    _check_paths(run_dir, run_dir, m)
    for rel, digest in m["files"].items():
        f = run_dir / rel
        if not f.is_file():
            raise UserError(f"{run_dir} is incomplete: {rel} is missing (see {MANIFEST}); "
                            "rerun the benchmark into this folder")
        if sha256_file(f) != digest:
            raise UserError(f"{run_dir} mixes runs or was edited: {rel} does not match "
                            f"{MANIFEST}; rerun the benchmark into this folder")
    return m
