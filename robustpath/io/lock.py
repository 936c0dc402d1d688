"""Locks on folders: one writer per run folder, one computation per cache entry.

A lock is an advisory ``fcntl.flock`` on a small file (``<folder>/.robustpath.io.lock``
for a run folder, ``<entry>.lock`` beside a cache entry) that also holds the holder's
pid, host, start time and command line, so the refusal can name it. The kernel drops
a flock when its process dies (SIGKILL included), so the lock of a dead process is
taken over by the next one without any staleness guess; the file itself is left in
place (deleting it would race with a process that just opened it).

* :func:`run_lock` - a second writer of the same run folder fails at once with one
  line naming the holder (``UserError``, exit 2).
* :func:`entry_lock` - a second process that needs the same cache entry (sweep
  cells sharing ``ckpt/``) waits until the first has written it, then loads it.

A lock file is opened with ``O_NOFOLLOW`` and must be a regular file with one link: a
symlinked (or hard-linked) lock file in a downloaded folder is refused in one line
instead of having the holder record written into its target (issue 25). A run lock
whose file is deleted or replaced while the run holds it (a second writer could then
lock the new file) is noticed by :func:`check_held` before the commit, and the run stops.
The ``filelock`` package was considered: it gives neither the holder record written
into the locked file nor the inode check, so the few lines here stay.

flock also works on NFS (Linux emulates it with POSIX byte-range locks), the shared
file system of the Ray set-up in docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from robustpath.errors import UserError

RUN_LOCK = ".robustpath.io.lock"


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime(
        "%Y-%m-%d %H:%M:%S"), "argv": " ".join(sys.argv)[:300]}


def _open_nofollow(lock_file: Path, flags: int) -> int:
    """``os.open`` that follows no link and accepts only a regular file with one name."""
    try:
        fd = os.open(lock_file, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{lock_file} is a symbolic link; a lock file must be a regular "
                            "file (remove the link)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise UserError(f"{lock_file} is not a plain file (a link or a device); a lock file "
                        "must be a regular file with one name (remove it)")
    return fd


def holder_of(lock_file: str | Path) -> dict:
    """What the lock file says about its (last) holder; ``{}`` when unreadable."""
    try:
        fd = _open_nofollow(Path(lock_file), os.O_RDONLY)
    except (OSError, UserError):
        return {}
    try:
        d = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}
    finally:
        os.close(fd)


def describe_holder(h: dict) -> str:
    if not h:
        return "another process"
    return f"pid {h.get('pid', '?')} on {h.get('host', '?')} (since {h.get('since', '?')})"


@contextlib.contextmanager
def _flock(lock_file: Path, *, wait: bool) -> Iterator[int | None]:
    """Hold an exclusive flock on ``lock_file``; yields its descriptor, or None (not
    held) when ``wait`` is false and another process holds it."""
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_nofollow(lock_file, os.O_RDWR | os.O_CREAT)
    except OSError as e:
        raise UserError(f"cannot lock {lock_file.parent} ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        try:
            yield fd
        finally:
            # the holder record stays (readable by whoever is refused next); flock goes
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# the run folders this process holds: a nested run() or report in the same process
# (write_run -> build_report, sweeps writing several cells) must not lock itself out
# (count, descriptor, lock file) per folder
_HELD: dict[Path, list] = {}


@contextlib.contextmanager
def run_lock(folder: str | Path, *, what: str = "written") -> Iterator[None]:
    """Be the only process writing ``folder``: fail at once, in one line naming the
    holder, when another live process holds it. Re-entrant within a process."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable ({e.strerror or e})") from None
    key = folder.resolve()
    if key in _HELD:
        _HELD[key][0] += 1
        try:
            yield
        finally:
            _HELD[key][0] -= 1
        return
    lock_file = folder / RUN_LOCK
    with _flock(lock_file, wait=False) as fd:
        if fd is None:
            raise UserError(f"{folder} is being {what} by {describe_holder(holder_of(lock_file))}"
                            f"; wait for it to finish or use another folder")
        _HELD[key] = [1, fd, lock_file]
        try:
            yield
        finally:
            del _HELD[key]


def check_held(folder: str | Path) -> None:
    """Before a commit: the run lock this process holds on ``folder`` is still the file
    at ``<folder>/.robustpath.io.lock`` (not deleted or replaced, which would let a second
    writer in); else a one-line UserError, and nothing is committed."""
    entry = _HELD.get(Path(folder).resolve())
    if entry is None:
        return
    _, fd, lock_file = entry
    try:
        now = os.stat(lock_file, follow_symlinks=False)
    except OSError:
        now = None
    held = os.fstat(fd)
    if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
        raise UserError(f"the lock file {lock_file} was deleted or replaced during the run "
                        "(another process may be writing this folder); nothing committed: "
                        "make sure no other run uses the folder, then rerun")


def is_locked(folder: str | Path) -> dict | None:
    """The holder of ``folder``'s run lock if a live process holds it, else None."""
    lock_file = Path(folder) / RUN_LOCK
    if not lock_file.is_file() or lock_file.is_symlink():
        return None
    fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder_of(lock_file) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def entry_lock(entry: str | Path) -> Iterator[None]:
    """Serialise the computation of one cache entry across processes (blocking): the
    second process waits, then finds the entry written and loads it."""
    entry = Path(entry)
    with _flock(entry.parent / f".{entry.name}.lock", wait=True):
        remove_stale_temporaries(entry)
        yield


def remove_stale_temporaries(entry: Path) -> None:
    """Delete the temporary files a killed writer of ``entry`` left behind
    (:func:`robustpath.io.store.atomic_write_bytes`' ``.<name>.<random>.tmp``). Safe under
    the entry's lock: no live process is writing this entry."""
    stem = entry.name.split(".")[0]
    found = list(entry.parent.glob(f".{stem}.*.tmp"))
    for folder in [entry, *entry.parent.glob(f"{entry.name}.*")]:  # a folder entry, .epochs/
        if folder.is_dir():
            found += folder.glob(".*.tmp")
    for f in found:
        f.unlink(missing_ok=True)
