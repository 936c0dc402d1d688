"""Issue 17 audit: the reproductions that tests/test_faults.py and tests/test_train.py
leave to the slow tier or do not cover, and the sweep folder's faults.

* sweeps: a second sweep writer of one folder fails at once naming the holder; a kill
  while the sweep's outputs are published leaves the old outputs whole; a cell killed
  between its commit and ``done.json`` is redone; two processes working on one shared
  stage cache compute each entry once; SIGKILL at random moments (slow);
* item 2 at the cache level, fast: each damage kind of an endpoint checkpoint or an
  ``.npz`` cache is refused with :class:`robustpath.io.store.CacheError`;
* item 4: ``train`` prints the paths it wrote; item 5 through the bench's endpoint
  stage; item 8: every flag a validation error names exists.

Fast tier: about 10 s in all (the lock, cache-level damage, train paths, endpoint-stage
resume, flag names); every test that runs a sweep is slow (3.5 min in all).

The tiny sweep: Fashion-MNIST, ``mlp``, one seed pair, unaligned, line and bezier, 200
training / 40 test images, one epoch each (about 10 s on one core).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustpath import bench
from robustpath.engine import stages
from robustpath.errors import UserError
from robustpath.io import cache, runfolder, store
from robustpath.io.lock import RUN_LOCK, is_locked
from robustpath.io.store import CacheError
from robustpath.report import html as html_report
from robustpath.report.cli import main as report_main
from robustpath.sweep import driver
from robustpath.sweep.__main__ import main as sweep_main

REPO = Path(__file__).resolve().parent.parent
CELL = "fashion-mnist-mlp-s0-1"
SWEEP = """\
name = "tinyfault"
preset = "quick"

[grid]
dataset = ["fashion-mnist"]
arch = ["mlp"]
seed_pairs = [[0, 1]]
align = ["none"]
paths = ["line", "bezier"]

[overrides]
train_subset = 200
test_subset = 40
endpoint_epochs = 1
curve_epochs = 1
t_points = {t}
train_steps = 1
eval_steps = 1
bn_batches = 1
bootstrap = 20
plane_grid = 0
strong = false
refine_rounds = 0
"""
# the sweep-level outputs that must come from one sweep run (provenance differs by argv)
PUBLISHED = ("sweep.json", "aggregate/summary.csv", "aggregate/summary.md", "aggregate/cells.csv")


def _env() -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "ROBUSTPATH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _one_error_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _published(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in PUBLISHED}


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory) -> tuple[Path, Path]:
    """Sweep A (3 t) and sweep B (4 t: another evaluation, same endpoints and curves)."""
    d = tmp_path_factory.mktemp("sweepfiles")
    a, b = d / "a.toml", d / "b.toml"
    a.write_text(SWEEP.format(t=3))
    b.write_text(SWEEP.format(t=4))
    return a, b


@pytest.fixture(scope="module")
def sweep_a(sweep_files, tmp_path_factory) -> Path:
    """Sweep A, run once, uninterrupted."""
    out = tmp_path_factory.mktemp("sweep") / "a"
    assert sweep_main([str(sweep_files[0]), "--out", str(out), "--no-progress"]) == 0
    return out


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(RUN_LOCK))
    return dest


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom robustpath.io.lock import run_lock\n"
            f"with run_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


# ---------------------------------------------------------------- sweeps: one writer
def test_second_sweep_writer_fails_at_once_naming_the_holder(sweep_files, tmp_path, capsys):
    """A sweep into a folder another process is writing (a sweep, bench, report) fails
    at once in one line naming the holder, before writing anything; ``report`` of that
    sweep is refused too."""
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text("{}")  # what report takes for a sweep folder
    holder = _hold_lock(out)
    try:
        capsys.readouterr()
        start = time.perf_counter()
        rc = sweep_main([str(sweep_files[1]), "--out", str(out), "--overwrite", "--no-progress"])
        assert rc == 2 and time.perf_counter() - start < 60
        _one_error_line(capsys.readouterr().err, f"pid {holder.pid}", "being written")
        assert report_main([str(out)]) == 2
        _one_error_line(capsys.readouterr().err, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK, "sweep.json"]


# ---------------------------------------------------------------- sweeps: atomic outputs
@pytest.mark.slow  # ~20 s with its sweep; the fast tier has ~20 s left in all
def test_killed_sweep_publication_leaves_the_old_outputs(sweep_a, sweep_files, tmp_path,
                                                         monkeypatch, capsys):
    """Killed while the aggregate of sweep B is being written (its summary tables
    already staged), the folder still shows sweep A's outputs, whole; the next reader
    discards the staging; B's rerun publishes B's outputs together."""
    out = _copy(sweep_a, tmp_path / "s")
    before = _published(out)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(html_report, "write_sweep_report", killed)
    assert sweep_main([str(sweep_files[1]), "--out", str(out), "--overwrite",
                       "--no-progress"]) == 130
    monkeypatch.undo()
    assert (out / runfolder.STAGING / "aggregate" / "summary.md").is_file()  # half staged
    assert _published(out) == before
    runfolder.verify(out)
    capsys.readouterr()
    # a reader recovers (discards the staging); B's cell (published on its own) is not
    # tabulated under A's sweep.json: refused in one line, A's tables stay whole
    assert report_main([str(out)]) == 2
    _one_error_line(capsys.readouterr().err, CELL, "another sweep run")
    assert not (out / runfolder.STAGING).exists()
    assert _published(out) == before
    assert sweep_main([str(sweep_files[1]), "--out", str(out), "--overwrite",
                       "--no-progress"]) == 0
    assert json.loads((out / "sweep.json").read_text())["source"] == str(sweep_files[1])
    assert (out / "aggregate" / "summary.csv").read_bytes() != before["aggregate/summary.csv"]
    runfolder.verify(out)


@pytest.mark.slow
def test_sweep_commit_interrupted_half_way_is_rolled_forward(sweep_a, tmp_path):
    """A kill between the sweep's commit point (staged manifest) and the end of the
    moves: the next reader finishes the publication."""
    out = _copy(sweep_a, tmp_path / "s")
    stage = runfolder.begin(out)
    for rel in ("sweep.json", "sweep.toml", "command.txt", "provenance.json", "tasks.json",
                "aggregate/summary.md"):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / rel, stage / rel)
    (stage / "command.txt").write_text("a newer sweep\n")
    (stage / "aggregate" / "summary.md").write_text("| a newer table |\n")
    files = {r: store.sha256_file(stage / r) for r in runfolder.outputs(stage)
             if not r.startswith("aggregate/")}
    store.atomic_write_json(stage / runfolder.MANIFEST, {
        "format": 1, "files": files, "derived": ["aggregate/summary.md"]})
    os.replace(stage / "command.txt", out / "command.txt")  # killed after the first move
    with pytest.raises(UserError, match="mixes runs|incomplete"):
        runfolder.verify(out)
    assert report_main([str(out)]) == 0  # recovers first: the newer outputs, whole
    assert (out / "command.txt").read_text() == "a newer sweep\n"
    runfolder.verify(out)


@pytest.mark.slow
def test_cell_killed_before_its_done_marker_is_redone(sweep_a, sweep_files, tmp_path,
                                                      monkeypatch):
    """Killed after a cell's new records were committed but before its done.json: the
    old done.json used to stay and mark the new records as the old cell's, so rerunning
    the old sweep skipped the cell and kept the other sweep's records."""
    out = _copy(sweep_a, tmp_path / "s")
    records = (out / "cells" / CELL / "records.csv").read_bytes()
    real = driver.atomic_write_json

    def killed_at_done(path, obj):
        if Path(path).name == "done.json":
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(driver, "atomic_write_json", killed_at_done)
    assert sweep_main([str(sweep_files[1]), "--out", str(out), "--overwrite",
                       "--no-progress"]) == 130
    monkeypatch.undo()
    assert (out / "cells" / CELL / "records.csv").read_bytes() != records  # B's cell, whole
    assert sweep_main([str(sweep_files[0]), "--out", str(out), "--overwrite",
                       "--no-progress"]) == 0
    assert (out / "cells" / CELL / "records.csv").read_bytes() == records
    assert _published(out) == _published(sweep_a)


# ---------------------------------------------------------------- sweeps: shared cache
WORKER = """
import hashlib, json, os, sys
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from robustpath.engine import stages
from robustpath.paths import fit as curve_train
from robustpath.engine import nodes
from robustpath.engine.plan import build_plan
from robustpath.sweep import load_sweep
from robustpath.sweep.driver import _place

toml, root, log, only = sys.argv[1:5]


def counting(name, real):
    def wrapped(*a, **k):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {name}\\n")
        return real(*a, **k)
    return wrapped


stages.train_endpoint = counting("endpoint", stages.train_endpoint)
real_fit = curve_train.train_curve  # called for cached curves too (it loads them): count epochs
curve_train.train_curve = lambda *a, **k: real_fit(
    *a, **k, on_epoch_end=counting("curve-epoch", lambda *e: None))
stages.evaluate_path = counting("eval", stages.evaluate_path)
sweep = load_sweep(toml)
_place(sweep, Path(root))
plan = build_plan(sweep.cells)
ctx = nodes.Context(str(Path(root).resolve()))
for cell in sweep.cells:
    nodes.run_data(cell.cfg)
print("ready", flush=True)
sys.stdin.readline()  # both workers start together
results, digests = {}, {}
for node in plan.nodes.values():
    if only != "all" and node.stage != only:
        continue
    r = nodes.call_node(node, ctx, *(results[d] for d in node.deps))
    assert "error" not in r, r
    results[node.id] = r
    if "result" in r:  # the evaluation's arrays, bit for bit
        digests[node.id] = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                            for k, v in r["result"].to_arrays().items()}
    else:
        digests[node.id] = r.get("key")
print(json.dumps(digests), flush=True)
"""


def _two_workers(toml: Path, root: Path, only: str) -> tuple[list[str], list[str]]:
    log = root.parent / f"computed-{only}.log"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(toml), str(root), str(log),
                               only], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    computed = log.read_text().split("\n")[:-1] if log.exists() else []
    return [o.strip().splitlines()[-1] for o, _ in outs], [c.split()[1] for c in computed]


@pytest.mark.slow
@pytest.mark.parametrize("only", ["endpoint", "all"])
def test_two_processes_on_one_stage_cache_compute_each_entry_once(sweep_files, tmp_path,
                                                                   only, capsys):
    """Two processes running the same tasks of a sweep on one ``ckpt/`` at the same time
    (two Ray workers, or a retried task whose first attempt still runs): each entry is
    computed once (the other process waits on its entry lock, then loads it), both get
    the same results, and the cache is intact: a sweep over it recomputes nothing."""
    root = tmp_path / "shared"
    digests, computed = _two_workers(sweep_files[0], root, only)
    assert digests[0] == digests[1]
    expected = {"endpoint": ["endpoint"] * 2,
                "all": ["curve-epoch"] + ["endpoint"] * 2 + ["eval"] * 2}[only]
    assert sorted(computed) == expected, computed
    for side in (root / "ckpt" / "endpoints").glob("*.json"):  # whole, checksums intact
        store.load_model(side.with_suffix(""), require_checksum=True)
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.epochs"))
    capsys.readouterr()
    assert sweep_main([str(sweep_files[0]), "--out", str(root), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning:" not in err, err  # no damaged entry found and recomputed
    tasks = json.loads((root / "tasks.json").read_text())["tasks"]
    assert not [t for t in tasks if t["stage"] in ("endpoint",) and t["computed"]]


# ---------------------------------------------------------------- sweeps: SIGKILL (slow)
@pytest.mark.slow
def test_sweep_sigkilled_at_random_moments_is_old_or_new_never_a_mix(sweep_a, sweep_files,
                                                                     tmp_path):
    """SIGKILL ``sweep B --overwrite`` over sweep A's folder at randomised moments (<= 6
    kills), then rerun until it completes. After every kill, what a reader sees (after
    recovering, as every reader does) is A's published outputs or B's, never a mix; at
    the end it is B's, equal to an uninterrupted B."""
    ref_b = _copy(sweep_a, tmp_path / "ref-b")
    assert sweep_main([str(sweep_files[1]), "--out", str(ref_b), "--overwrite",
                       "--no-progress"]) == 0
    old, new = _published(sweep_a), _published(ref_b)
    out = _copy(sweep_a, tmp_path / "s")
    rng = random.Random(1717)

    def cmd(folder):
        return [sys.executable, "-m", "robustpath.sweep", str(sweep_files[1]), "--out",
                str(folder), "--overwrite", "--no-progress"]

    # the kill window is sized to this machine: one uninterrupted B-over-A process
    timed = _copy(sweep_a, tmp_path / "timed")
    start = time.perf_counter()
    subprocess.run(cmd(timed), env=_env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    window = time.perf_counter() - start
    kills = []
    for _ in range(12):
        p = subprocess.Popen(cmd(out), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if len(kills) < 6:
            delay = rng.uniform(0.1, 0.9) * window  # inside the run (imports included)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills.append(round(delay, 1))
                assert is_locked(out) is None  # the kernel dropped the dead sweep's lock
                runfolder.recover(out)  # what every reader does first
                runfolder.verify(out)
                assert _published(out) in (old, new), kills
                continue
        if p.wait(timeout=900) == 0:
            break
    else:
        pytest.fail("the sweep never completed")
    print(f"SIGKILLs after {kills} s; then completed")
    assert len(kills) >= 2, kills
    assert _published(out) == new
    assert not (out / runfolder.STAGING).exists()


# ---------------------------------------------------------------- item 2, cache level
def _tiny_checkpoint(folder: Path) -> Path:
    from robustpath import models

    torch.manual_seed(0)
    model = models.create("mlp", "fashion-mnist", 0.25)
    path = folder / "ep"
    store.save_model(path, model, {"metrics": {"robust_acc": 0.5}, "config": "k"})
    return path


def _xor(f: Path, n: int) -> None:
    b = bytearray(f.read_bytes())
    mid = len(b) // 2
    for i in range(max(0, mid - n // 2), min(len(b), mid + n // 2)):
        b[i] ^= 0x5A
    f.write_bytes(bytes(b))


def _resave_wrong_shapes(path: Path) -> None:
    tensors, meta = store.load_checkpoint(path)
    meta.pop("content"), meta.pop("provenance")
    store.save_checkpoint(path, {k: (v[:1] if v.dim() else v) for k, v in tensors.items()},
                          meta)


def _edit_sidecar(path: Path, edit) -> None:
    js = store.checkpoint_files(path)[1]
    js.write_text(json.dumps(edit(json.loads(js.read_text()))))


CHECKPOINT_DAMAGE = {
    "xor-4kb": (lambda p: _xor(store.checkpoint_files(p)[0], 4096), "checksum"),
    "truncated": (lambda p: (lambda f: f.write_bytes(f.read_bytes()[:1000]))(
        store.checkpoint_files(p)[0]), "checksum"),
    "sidecar-list": (lambda p: store.checkpoint_files(p)[1].write_text("[]"), "not a checkpoint"),
    "sidecar-other-arch": (lambda p: _edit_sidecar(p, lambda m: {
        **m, "model": {**m["model"], "arch": "resnet20"}}), "expected"),
    "wrong-shapes": (_resave_wrong_shapes, "does not fit"),
    "sidecar-garbled": (lambda p: store.checkpoint_files(p)[1].write_text("{not json"),
                        "unreadable"),
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_refused_in_one_line(tmp_path, kind):
    """Issue 17.2 at the cache level (the end-to-end runs are in test_faults.py, most of
    them slow): every damage kind raises CacheError (one line, naming the file and
    listing the files to discard), never a traceback or silently wrong weights."""
    path = _tiny_checkpoint(tmp_path)
    store.load_model(path, expect={"arch": "mlp", "dataset": "fashion-mnist", "width": 0.25})
    edit, needle = CHECKPOINT_DAMAGE[kind]
    edit(path)
    with pytest.raises(CacheError) as e:
        store.load_model(path, require_checksum=True,
                         expect={"arch": "mlp", "dataset": "fashion-mnist", "width": 0.25})
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(tmp_path) in msg, msg
    assert set(e.value.files) == set(store.checkpoint_files(path))


def test_endpoint_sidecar_without_metrics_is_recomputed(tmp_path, capsys):
    """Issue 17.2: a sidecar lacking ``metrics`` gave a KeyError traceback."""
    from robustpath.config import from_preset

    cfg = from_preset("quick", arch="mlp", width=0.25, train_subset=64, test_subset=16,
                      endpoint_epochs=1, train_steps=1, eval_steps=1, batch_size=32,
                      strong=False)
    data = stages.RunData.load(cfg)
    model, metrics, key = stages.endpoint(cfg, 0, tmp_path, data, "cpu", progress=False)
    (js,) = (tmp_path / "ckpt" / "endpoints").glob("*.json")
    js.write_text(json.dumps({k: v for k, v in json.loads(js.read_text()).items()
                              if k != "metrics"}))
    capsys.readouterr()
    again, metrics2, key2 = stages.endpoint(cfg, 0, tmp_path, data, "cpu", progress=False)
    err = capsys.readouterr().err
    assert "lacks its metrics" in err and "recomputing" in err, err
    assert key2 == key and metrics2["robust_acc"] == metrics["robust_acc"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


def _swap(a: Path, b: Path) -> None:
    os.replace(a, a.with_name("swap"))
    os.replace(b, a)
    os.replace(a.with_name("swap"), b)


NPZ_DAMAGE = {
    "swapped": (lambda p, other: (_swap(p, other), _swap(p.with_suffix(".json"),
                                                         other.with_suffix(".json"))),
                "another configuration"),
    "swapped-npz-only": (lambda p, other: _swap(p, other), "checksum"),
    "xor": (lambda p, other: _xor(p, 64), "checksum"),
    "truncated": (lambda p, other: p.write_bytes(p.read_bytes()[:50]), "checksum"),
    "no-sidecar": (lambda p, other: p.with_suffix(".json").unlink(), "no sidecar"),
}


@pytest.mark.parametrize("kind", list(NPZ_DAMAGE))
def test_damaged_npz_cache_is_refused(tmp_path, kind):
    """Issue 17.2: two swapped ``ckpt/eval/*.npz`` files were accepted."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    cache.save_npz(a, {"acc": np.arange(6.0).reshape(2, 3)}, {"curve": "a", "t": 3})
    cache.save_npz(b, {"acc": np.ones((2, 3))}, {"curve": "b", "t": 3})
    assert cache.load_npz(a, {"curve": "a", "t": 3})["acc"][1, 2] == 5.0
    edit, needle = NPZ_DAMAGE[kind]
    edit(a, b)
    with pytest.raises(CacheError, match=needle):
        cache.load_npz(a, {"curve": "a", "t": 3})


# ---------------------------------------------------------------- items 4, 5, 8
def test_train_cli_prints_the_paths_it_wrote(tmp_path, capsys):
    """Issue 17.4: ``--out X/eps0.1`` then ``X/eps0.2`` both wrote ``X/eps0.safetensors``
    and printed paths that did not exist."""
    from robustpath.train import cli as train_cli

    common = ["--arch", "mlp", "--width", "0.25", "--epochs", "1", "--train-subset", "64",
              "--test-subset", "16", "--steps", "1", "--batch-size", "32", "--device", "cpu"]
    printed = []
    for out in (tmp_path / "X" / "eps0.1", tmp_path / "X" / "eps0.2", tmp_path / "d"):
        arg = str(out) + ("/" if out.name == "d" else "")
        assert train_cli.main(common + ["--out", arg]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        path = Path(line.split("-> ")[1].split(" (+")[0])
        assert path.is_file() and path.with_suffix(".json").is_file(), line
        printed.append(path)
    assert printed == [tmp_path / "X" / "eps0.1.safetensors", tmp_path / "X" / "eps0.2.safetensors",
                       tmp_path / "d" / "model.safetensors"]


def test_killed_endpoint_stage_resumes_at_its_last_epoch(tmp_path, monkeypatch):
    """Issue 17.5 through the bench's endpoint stage: killed after epoch 1 of 2, the
    rerun trains epoch 2 only and ends with the uninterrupted run's weights."""
    from robustpath.config import from_preset
    from robustpath.train import loop as train

    cfg = from_preset("quick", arch="mlp", width=0.25, train_subset=64, test_subset=16,
                      endpoint_epochs=2, train_steps=1, eval_steps=1, batch_size=32,
                      strong=False)
    data = stages.RunData.load(cfg)
    ref, ref_metrics, _ = stages.endpoint(cfg, 0, tmp_path / "ref", data, "cpu", progress=False)
    epochs, real = [], train.train_model

    def run_killed_after(n):
        def wrapped(*a, on_epoch_end=None, **k):
            def hook(epoch, record):
                epochs.append(epoch)
                if epoch == n:
                    raise KeyboardInterrupt
            return real(*a, on_epoch_end=hook, **k)
        return wrapped

    monkeypatch.setattr(train, "train_model", run_killed_after(1))
    with pytest.raises(KeyboardInterrupt):
        stages.endpoint(cfg, 0, tmp_path / "run", data, "cpu", progress=False)
    monkeypatch.setattr(train, "train_model", run_killed_after(0))
    model, metrics, _ = stages.endpoint(cfg, 0, tmp_path / "run", data, "cpu", progress=False)
    assert epochs == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 ref.state_dict().values()))
    assert metrics["robust_acc"] == ref_metrics["robust_acc"]
    assert not list((tmp_path / "run" / "ckpt" / "endpoints").glob("*.epochs"))


def test_every_flag_a_bench_error_names_exists(capsys):
    """Issue 17.8: errors named flags that do not exist (``--endpoint-epochs``,
    ``--eval-steps``)."""
    from dataclasses import fields

    from robustpath.config import BenchConfig, from_preset

    options = set(bench.parser()._option_string_actions)
    tried = 0
    for f in fields(BenchConfig):
        if f.type not in ("int", int) or f.name in ("plane_grid",):
            continue
        for bad in (0, -1):
            try:
                from_preset("quick", **{f.name: bad})
            except UserError as e:
                tried += 1
                named = re.findall(r"--[a-z][a-z0-9-]+", str(e))
                assert set(named) <= options, (f.name, str(e))  # only flags that exist ...
                assert named or f.name in str(e), (f.name, str(e))  # ... or the setting
    assert tried >= 15, tried


@pytest.mark.parametrize("text", ["[]", '{"cells": "x"}', '{"cells": [{"name": 1}]}', "{"])
def test_report_of_a_damaged_sweep_json_is_one_line(tmp_path, text, capsys):
    """A sweep folder whose sweep.json is not a sweep's description gave an
    AttributeError / KeyError traceback."""
    (tmp_path / "sweep.json").write_text(text)
    assert report_main([str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, str(tmp_path / "sweep.json"), "corrupt")
    assert not (tmp_path / runfolder.STAGING).exists()


# ---------------------------------------------------------------- audit: silently ignored
TINY_BENCH = ["--arch", "mlp", "--width", "0.25", "--seeds", "0,1", "--epochs", "1",
              "--curve-epochs", "1", "--train-subset", "64", "--test-subset", "16",
              "--t-points", "3", "--plane-grid", "0", "--no-progress"]


@pytest.mark.parametrize("cli", ["bench", "train", "soup", "zoo"])
def test_missing_data_root_is_one_line_before_any_work(tmp_path, cli, capsys):
    """``--data-root /nonexistent`` on Fashion-MNIST ran to the end: the data came from
    Debian's copy without a word. A given --data-root must be an existing folder."""
    from robustpath.soup import cli as soup_cli
    from robustpath.train import cli as train_cli
    from robustpath.zoo.cli import main as zoo_main

    missing, out = str(tmp_path / "nonexistent"), tmp_path / "run"
    main, argv = {
        "bench": (bench.main, [*TINY_BENCH, "--no-strong", "--out", str(out)]),
        "train": (train_cli.main, ["--arch", "mlp", "--epochs", "1", "--out", str(out / "m")]),
        "soup": (soup_cli.main, ["--out", str(out)]),
        "zoo": (zoo_main, ["compare", "--models", "a,b", "--out", str(out)]),
    }[cli]
    assert main([*argv, "--data-root", missing]) == 2
    _one_error_line(capsys.readouterr().err, "--data-root", missing, "does not exist")
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    assert main([*argv, "--data-root", str(tmp_path / "file")]) == 2
    _one_error_line(capsys.readouterr().err, "--data-root", "not a folder")


@pytest.mark.parametrize("argv,needle", [
    (["--curvature-iters", "5"], "--curvature-iters needs --curvature"),
    (["--no-strong", "--strong-examples", "5"], "--strong-examples needs the strong stage"),
    (["--no-strong", "--strong-pgd-steps", "5"], "--strong-pgd-steps needs the strong stage"),
    (["--no-strong", "--strong-pgd-restarts", "2"], "--strong-pgd-restarts needs the strong"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_setting_of_a_stage_that_does_not_run_is_refused(tmp_path, argv, needle, capsys):
    """Accepted silently before: ``--curvature-iters`` without ``--curvature``, the strong
    stage's settings with ``--no-strong`` (its --aa-version was already refused)."""
    assert bench.main([*TINY_BENCH, *argv, "--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert not (tmp_path / "run").exists()


def test_zoo_aa_version_without_the_strong_stage_is_refused(tmp_path, capsys):
    """``zoo compare --no-strong --aa-version plus`` was accepted (bench refused it)."""
    from robustpath.zoo.cli import main as zoo_main

    for extra in (["--aa-version", "plus"], ["--aa-version", "custom", "--aa-attacks", "apgd-ce"]):
        argv = ["compare", "--models", "a,b", "--no-strong", *extra, "--out", str(tmp_path / "r")]
        assert zoo_main(argv) == 2
        _one_error_line(capsys.readouterr().err, "need the strong stage")
    assert not (tmp_path / "r").exists()


def test_provenance_imports_nothing():
    """The first checkpoint's sidecar recorded package versions by importing torchvision
    and torchattacks: 7-10 s on a loaded machine between writing the ``.safetensors``
    and its ``.json``, a window in which a kill lost the epoch just saved."""
    code = ("import sys; from robustpath.io import store; v = store.provenance()['versions']; "
            "print(sorted(m for m in ('torchvision', 'torchattacks') if m in sys.modules), "
            "'torchvision' in v, 'torchattacks' in v)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "True", "True"]
