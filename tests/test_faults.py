"""Fault injection (issue 17): concurrent writers, stale locks, damaged caches, kills at
any moment, bad inputs. Each reproduction of the issue is a test here that fails on
the code before it; results after a fault must equal an uninterrupted run's, byte
for byte.

Fast tier: locks, the killed ``--overwrite`` run, commit recovery, a few cache
corruptions, bad inputs, umask. Slow tier (``-m slow``): every corruption kind end
to end, two bench processes at once, SIGKILL at randomised moments.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robustpath import bench
from robustpath.errors import UserError
from robustpath.io import runfolder, store
from robustpath.io.lock import RUN_LOCK, is_locked, run_lock
from robustpath.report.cli import main as report_main

REPO = Path(__file__).resolve().parent.parent
FAULT = ["--train-subset", "300", "--test-subset", "60", "--epochs", "2", "--curve-epochs", "2",
         "--t-points", "3", "--bn-batches", "1", "--bootstrap", "20", "--seeds", "0,1",
         "--align", "none,weight", "--paths", "line,bezier", "--steps", "2", "--train-steps", "1",
         "--plane-grid", "0", "--no-strong", "--refine-rounds", "0", "--no-progress"]
OUTPUTS = ("records.csv", "tables/summary.csv", "tables/per_path.csv", "config.json")
BASELINE_SECONDS: list[float] = []  # how long the uninterrupted run took on this machine


def _env() -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "ROBUSTPATH_OFFLINE": "1"}


def _bench_cmd(out: Path, extra=()) -> list[str]:
    return [sys.executable, "-m", "robustpath.bench", *FAULT, *extra, "--out", str(out)]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One uninterrupted run; every fault test compares against its outputs."""
    out = tmp_path_factory.mktemp("faults") / "base"
    start = time.perf_counter()
    assert bench.main(FAULT + ["--out", str(out)]) == 0
    BASELINE_SECONDS.append(time.perf_counter() - start)
    return out


def _copy(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns(RUN_LOCK))
    return dest


def _same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        if name == "config.json":  # differs only by "out"
            ca, cb = (json.loads((d / name).read_text()) for d in (a, b))
            ca.pop("out"), cb.pop("out")
            assert ca == cb
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _one_error_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock until killed."""
    code = ("import sys, time\nfrom robustpath.io.lock import run_lock\n"
            f"with run_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


# ---------------------------------------------------------------- 1. locks
def test_second_writer_fails_at_once_naming_the_holder(baseline, tmp_path, capsys):
    """Issue 17.1: a second run into a folder being written used to run too, and the
    folder silently held only one of them."""
    run = _copy(baseline, tmp_path / "run")
    before = {n: (run / n).read_bytes() for n in OUTPUTS}
    holder = _hold_lock(run)
    try:
        start = time.perf_counter()
        rc = bench.main(FAULT + ["--t-points", "4", "--out", str(run), "--overwrite"])
        elapsed = time.perf_counter() - start
        line = _one_error_line(capsys.readouterr().err, f"pid {holder.pid}", "being written")
        assert rc == 2 and elapsed < 60, (rc, elapsed, line)
        # report is a writer of tables too: refused while the run is being written
        assert report_main([str(run)]) == 2
        _one_error_line(capsys.readouterr().err, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert {n: (run / n).read_bytes() for n in OUTPUTS} == before


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    holder = _hold_lock(folder)
    assert is_locked(folder)["pid"] == holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert is_locked(folder) is None  # the kernel dropped the dead process's lock
    with run_lock(folder):
        assert json.loads((folder / RUN_LOCK).read_text())["pid"] == os.getpid()
    # a lock file left by a process that no longer exists (never flocked) is no obstacle
    (folder / RUN_LOCK).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    with run_lock(folder):
        pass


# ---------------------------------------------------------------- 3. atomic run folders
def test_killed_overwrite_run_leaves_the_old_run(baseline, tmp_path, monkeypatch, capsys):
    """Issue 17.3: killed after config.json, the new config sat beside the old records,
    report rebuilt them under it, and the original command was refused."""
    run = _copy(baseline, tmp_path / "run")
    before = {n: (run / n).read_bytes() for n in OUTPUTS}

    def killed(*a, **k):  # dies while writing the run folder, config.json already written
        raise KeyboardInterrupt

    from robustpath.io import outputs

    monkeypatch.setattr(outputs, "write_records", killed)
    assert bench.main(FAULT + ["--bootstrap", "30", "--out", str(run), "--overwrite"]) == 130
    monkeypatch.undo()
    assert {n: (run / n).read_bytes() for n in OUTPUTS} == before  # the old run, whole
    capsys.readouterr()
    assert report_main([str(run)]) == 0
    assert not (run / runfolder.STAGING).exists()  # the half-written staging was discarded
    assert bench.main(FAULT + ["--out", str(run)]) == 0  # the original command still runs
    _same_outputs(run, baseline)


def test_commit_interrupted_half_way_is_rolled_forward(baseline, tmp_path):
    """A kill between the commit point (staged manifest) and the end of the moves:
    every reader first finishes the commit, so the folder is the new run, whole."""
    run = _copy(baseline, tmp_path / "run")
    stage = runfolder.begin(run)
    for name in ("config.json", "records.csv", "examples.npz", "endpoints.json"):
        shutil.copy(baseline / name, stage / name)
    cfg = json.loads((stage / "config.json").read_text())
    cfg["bootstrap"] = 21  # the "new" run differs from the old one in config and records
    (stage / "config.json").write_text(json.dumps(cfg))
    (stage / "records.csv").write_text((baseline / "records.csv").read_text() + "\n")
    new = {n: (stage / n).read_bytes() for n in ("config.json", "records.csv")}
    files = {r: store.sha256_file(stage / r) for r in runfolder.outputs(stage)}
    store.atomic_write_json(stage / runfolder.MANIFEST, {"format": 1, "files": files,
                                                          "derived": []})
    os.replace(stage / "config.json", run / "config.json")  # killed after the first move
    with pytest.raises(UserError, match="mixes runs"):
        runfolder.verify(run)  # the mix is visible to a reader that does not recover ...
    assert runfolder.recover(run) == "rolled forward"  # ... and every command recovers first
    runfolder.verify(run)
    assert {n: (run / n).read_bytes() for n in new} == new
    assert not (run / "curves.json").exists()  # an output of the old run only: removed


def test_report_refuses_a_folder_that_mixes_runs(baseline, tmp_path, capsys):
    run = _copy(baseline, tmp_path / "run")
    other = json.loads((run / "config.json").read_text())
    other["t_points"] = 4
    (run / "config.json").write_text(json.dumps(other))
    assert report_main([str(run)]) == 2
    _one_error_line(capsys.readouterr().err, "config.json", "manifest.json")


# ---------------------------------------------------------------- 2. verified caches
def _xor_middle(path: Path, n: int = 4096) -> None:
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    lo, hi = max(0, mid - n // 2), min(len(b), mid + n // 2)
    b[lo:hi] = bytes(x ^ 0x5A for x in b[lo:hi])
    path.write_bytes(bytes(b))


def _one(run: Path, pattern: str) -> Path:
    found = sorted(run.glob(pattern))
    assert found, pattern
    return found[0]


def _sidecar(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(edit(meta)))


def _wrong_shapes(st: Path) -> None:
    tensors, meta = store.load_checkpoint(st)
    bad = {k: (v[:1] if v.dim() else v) for k, v in tensors.items()}
    meta.pop("content"), meta.pop("provenance")
    store.save_checkpoint(st, bad, meta)  # consistent checksum, tensors of the wrong shape


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name("swap.tmp")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def _drop_eval(run: Path) -> None:
    shutil.rmtree(run / "ckpt" / "eval")


CORRUPTIONS = {
    # the reproduction: 4 KB XORed in the middle of an endpoint (losses ~1e22)
    "endpoint-xor": lambda r: _xor_middle(_one(r, "ckpt/endpoints/*seed0-*.safetensors")),
    "endpoint-truncated": lambda r: (lambda p: p.write_bytes(p.read_bytes()[:1000]))(
        _one(r, "ckpt/endpoints/*seed1-*.safetensors")),
    "endpoint-sidecar-list": lambda r: _one(r, "ckpt/endpoints/*seed0-*.json").write_text("[]"),
    "endpoint-sidecar-no-metrics": lambda r: _sidecar(
        _one(r, "ckpt/endpoints/*seed0-*.json"), lambda m: {k: v for k, v in m.items()
                                                            if k != "metrics"}),
    "endpoint-sidecar-other-arch": lambda r: _sidecar(
        _one(r, "ckpt/endpoints/*seed0-*.json"), lambda m: {**m, "model": {**m["model"],
                                                                            "arch": "resnet20"}}),
    "endpoint-wrong-shapes": lambda r: _wrong_shapes(_one(r, "ckpt/endpoints/*seed0-*.json")),
    "alignment-xor": lambda r: _xor_middle(_one(r, "ckpt/align/weight-*.safetensors"), 512),
    "curve-final-xor": lambda r: _xor_middle(_one(r, "ckpt/curves/bezier-*/final.safetensors"),
                                             512),
    "eval-swapped": lambda r: _swap(*sorted((r / "ckpt" / "eval").glob("*.npz"))[:2]),
    "eval-xor": lambda r: _xor_middle(_one(r, "ckpt/eval/*.npz"), 256),
    "eval-truncated": lambda r: (lambda p: p.write_bytes(p.read_bytes()[:100]))(
        _one(r, "ckpt/eval/*.npz")),
    "points-swapped": lambda r: (_drop_eval(r), _swap(
        *sorted((r / "ckpt" / "points").rglob("*.npz"))[:2])),
}
FAST_CORRUPTIONS = ("endpoint-xor", "endpoint-sidecar-list", "eval-swapped")


@pytest.mark.parametrize("kind", [pytest.param(k, marks=() if k in FAST_CORRUPTIONS
                                               else pytest.mark.slow) for k in CORRUPTIONS])
def test_damaged_cache_is_detected_and_recomputed(baseline, tmp_path, kind, capsys):
    """Issue 17.2: damaged, swapped or foreign cache files were used silently or gave
    tracebacks; now each is named in one warning line and its stage recomputed, and
    the results equal the undamaged run's."""
    run = _copy(baseline, tmp_path / "run")
    CORRUPTIONS[kind](run)
    capsys.readouterr()
    assert bench.main(FAULT + ["--out", str(run)]) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert warnings and "recomputing" in warnings[0], err
    assert "Traceback" not in err
    _same_outputs(run, baseline)


# ---------------------------------------------------------------- 8. bad inputs
BAD_BENCH = [
    (["--width", "nan"], "--width"), (["--width", "inf"], "--width"),
    (["--eps", "1e309"], "--eps"), (["--step-size", "1e309"], "--step-size"),
    (["--seeds", "0,99999999999999999999999"], "--seeds"), (["--eps", "2"], "pixel range"),
    (["--epochs", "0"], "--epochs"), (["--steps", "0"], "--steps"),
]


@pytest.mark.parametrize("args,needle", BAD_BENCH, ids=lambda v: str(v))
def test_bench_bad_input_is_one_line_before_any_work(tmp_path, args, needle, capsys):
    out = tmp_path / "out"
    assert bench.main(FAULT + args + ["--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert not out.exists()


def _legacy(baseline: Path, dest: Path) -> Path:
    run = _copy(baseline, dest)
    (run / runfolder.MANIFEST).unlink()  # a hand-made folder: only its own content checked
    shutil.rmtree(run / "ckpt")
    return run


def _edit_csv(run: Path, col: str, value: str) -> None:
    import pandas as pd

    f = pd.read_csv(run / "records.csv")
    f[col] = f[col].astype(object)
    f.loc[1, col] = value
    (run / "records.csv").write_text(f.to_csv(index=False))


BAD_REPORT = {
    "config-list": (lambda r: (r / "config.json").write_text("[1, 2]"), "not a run configuration"),
    "bootstrap-text": (lambda r: _sidecar(r / "config.json", lambda c: {**c, "bootstrap": "many"}),
                       "bootstrap"),
    "bootstrap-zero": (lambda r: _sidecar(r / "config.json", lambda c: {**c, "bootstrap": 0}),
                       "bootstrap"),
    "eps-text": (lambda r: _sidecar(r / "config.json", lambda c: {**c, "eps": "big"}), "eps"),
    "t-text": (lambda r: _edit_csv(r, "t", "abc"), "column t"),
    "clean-loss-garbage": (lambda r: _edit_csv(r, "clean_loss", "7.5"), "clean_loss"),
    "speed-negative": (lambda r: _edit_csv(r, "speed", "-1"), "column speed"),
}


@pytest.mark.parametrize("kind", list(BAD_REPORT))
def test_report_bad_input_is_one_line(baseline, tmp_path, kind, capsys):
    run = _legacy(baseline, tmp_path / "run")
    edit, needle = BAD_REPORT[kind]
    edit(run)
    before = (run / "tables" / "summary.md").read_bytes()
    capsys.readouterr()
    assert report_main([str(run)]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert (run / "tables" / "summary.md").read_bytes() == before


def test_legacy_folder_without_manifest_still_reports(baseline, tmp_path):
    run = _legacy(baseline, tmp_path / "run")
    assert report_main([str(run)]) == 0


def test_sweep_name_dot_dot_is_refused(tmp_path):
    from robustpath.sweep.spec import load_sweep

    for name in ("..", "."):
        spec = tmp_path / f"s{len(name)}.toml"
        spec.write_text(f'name = "{name}"\n[grid]\nseeds = [0, 1]\n')
        with pytest.raises(UserError, match="folder name"):
            load_sweep(spec, results_root=tmp_path)


@pytest.mark.parametrize("argv", [["--anything"]])
def test_plane_module_is_not_a_command(argv):
    res = subprocess.run([sys.executable, "-m", "robustpath.paths.plane", *argv], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a command" in res.stderr


def test_cifar_labels_out_of_range_are_refused_before_training(tmp_path, capsys):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                 "labels": [12] * 20}  # 10 classes: labels must be < 10
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    out = tmp_path / "out"
    rc = bench.main(FAULT + ["--dataset", "cifar10", "--arch", "cnn-small", "--eps", "8/255",
                             "--train-subset", "0", "--test-subset", "0",
                             "--data-root", str(tmp_path), "--out", str(out)])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "labels")
    assert not (out / "ckpt").exists()


# ---------------------------------------------------------------- 6. umask
def test_outputs_honour_the_umask(baseline, tmp_path):
    """Issue 17.6: every output was 0600 (mkstemp); report turned 0644 files into 0600."""
    old = os.umask(0o022)
    try:
        store.atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
        run = _legacy(baseline, tmp_path / "run")
        assert report_main([str(run)]) == 0
        assert (run / "tables" / "summary.md").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        store.atomic_write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    for name in OUTPUTS:
        assert (baseline / name).stat().st_mode & 0o044, name  # readable by group / others


# ---------------------------------------------------------------- slow: processes and kills
@pytest.mark.slow
def test_two_bench_processes_at_once(baseline, tmp_path):
    """The issue's reproduction: ``bench --out D & sleep 2; bench --t-points 4 --out D``."""
    run = tmp_path / "run"
    first = subprocess.Popen(_bench_cmd(run), env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while (is_locked(run) or {}).get("pid") != first.pid:  # the first has started writing
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.5)
    start = time.perf_counter()
    second = subprocess.run(_bench_cmd(run, ["--t-points", "4"]), env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 2, second.stderr
    _one_error_line(second.stderr, f"pid {first.pid}")
    assert time.perf_counter() - start < 120
    assert first.wait(timeout=1200) == 0
    _same_outputs(run, baseline)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_identical_results(baseline, tmp_path):
    """SIGKILL the benchmark at randomised moments (bounded: <= 8 kills), rerun until it
    completes; outputs equal the uninterrupted run's, and no staging or temporary file
    is left behind."""
    rng = random.Random(17)
    # kill windows sized to this machine: a process starts in ~5 s, and a window of 60 %
    # of a whole run lets no single resumed run finish the work, so >= 2 kills land
    window = 0.6 * (5 + (BASELINE_SECONDS[0] if BASELINE_SECONDS else 30))
    run = tmp_path / "run"
    kills: list[float] = []  # seconds after each start at which a run was killed
    for _ in range(16):
        p = subprocess.Popen(_bench_cmd(run), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if len(kills) < 8:
            delay = rng.uniform(2, window)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills.append(round(delay, 1))
                continue
        if p.wait(timeout=1200) == 0:
            break
    else:
        pytest.fail("the benchmark never completed")
    print(f"SIGKILLs after {kills} s; then completed")
    assert len(kills) >= 2, kills
    _same_outputs(run, baseline)
    runfolder.verify(run)
    assert not (run / runfolder.STAGING).exists()
    # a killed atomic write's temporary is removed by the next writer of that entry (the
    # point cache is shared between paths, so its strays stay: never read, never harmful)
    assert not [f for f in run.rglob("*.tmp") if "points" not in f.parts]


# ---------------------------------------------------------------- 7. zoo checkpoints
ZOO_NAME = "TinyFault2099_WRN"


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch):
    """A one-entry RobustBench registry (tiny WideResNet) and its checkpoint folder."""
    from robustpath.zoo import access as zoo
    from robustpath.zoo.rbcompat import import_robustbench

    try:
        import_robustbench()
    except UserError as e:
        pytest.skip(str(e))

    def wrn():
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet

        return WideResNet(depth=10, widen_factor=1)

    monkeypatch.setenv("ROBUSTPATH_OFFLINE", "1")
    monkeypatch.setitem(zoo.registry("cifar10", "Linf"), ZOO_NAME,
                        {"model": wrn, "gdrive_id": "not-used"})
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    return tmp_path / "models", folder / f"{ZOO_NAME}.pt", wrn


def test_zoo_names_html_and_truncated_files_before_any_pickle_advice(zoo_dir):
    """Issue 17.7: an HTML page saved as .pt got "if you trust the file, rerun with
    --trust-checkpoints"."""
    import torch

    from robustpath.zoo import access as zoo

    model_dir, pt, wrn = zoo_dir
    pt.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning"
                  "</title></head></html>")
    for trust in (False, True):
        with pytest.raises(UserError, match="HTML page") as e:
            zoo.load(ZOO_NAME, model_dir, trust_checkpoint=trust)
        assert "trust" not in str(e.value)
    torch.save(wrn().state_dict(), pt)
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated") as e:
        zoo.load(ZOO_NAME, model_dir)
    assert "trust" not in str(e.value)


def test_zoo_sha256_is_pinned(zoo_dir, tmp_path):
    import torch

    from robustpath.zoo import access as zoo

    _, pt, wrn = zoo_dir
    torch.save(wrn().state_dict(), pt)
    digest = store.sha256_file(pt)
    assert zoo.check_sha256(pt, digest) == digest
    with pytest.raises(UserError, match="expected"):
        zoo.check_sha256(pt, "0" * 64)
    assert zoo.parse_expect_sha256(f"{ZOO_NAME}={digest}") == {ZOO_NAME: digest}
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{digest}  {ZOO_NAME}.pt\n")
    assert zoo.parse_expect_sha256(str(sums)) == {ZOO_NAME: digest}
    with pytest.raises(UserError, match="expect-sha256"):
        zoo.parse_expect_sha256(f"{ZOO_NAME}=abc")


def test_zoo_list_model_dir_file_is_refused(tmp_path, capsys):
    from robustpath.zoo import cli as zoo_cli

    f = tmp_path / "afile"
    f.write_text("x")
    assert zoo_cli.main(["list", "--model-dir", str(f)]) == 2
    _one_error_line(capsys.readouterr().err, "is a file")


def test_zoo_compare_with_an_html_checkpoint_fails_cleanly(zoo_dir, tmp_path, monkeypatch,
                                                          capsys):
    """A failed compare used to leave an empty run folder; an HTML page is named as such."""
    import pickle

    import torch

    from robustpath.zoo import access as zoo
    from robustpath.zoo import cli as zoo_cli

    model_dir, pt, wrn = zoo_dir
    other = "TinyFault2099_WRN_B"
    monkeypatch.setitem(zoo.registry("cifar10", "Linf"), other,
                        {"model": wrn, "gdrive_id": "not-used"})
    torch.save(wrn().state_dict(), pt.with_name(f"{other}.pt"))
    pt.write_text("<html><body>Google Drive: quota exceeded</body></html>")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (8, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, 8).tolist()}, f)
    out = tmp_path / "run"
    rc = zoo_cli.main(["compare", "--models", f"{ZOO_NAME},{other}", "--model-dir", str(model_dir),
                   "--data-root", str(tmp_path / "data"), "--paths", "line", "--align", "none",
                   "--t-points", "2", "--test-subset", "8", "--no-progress", "--out", str(out)])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "HTML page")
    assert not out.exists()


def test_a_node_failing_in_a_worker_is_one_line_exit_1_and_a_rerun_resumes(tmp_path,
                                                                          monkeypatch, capsys):
    """With 2 workers a node's error comes back as a line of text: the bench prints it as
    one line and exits 1 (not a traceback of the driver, not 2: the input was fine),
    writes no results file, keeps the finished nodes, and the same command then resumes
    from them."""
    out = tmp_path / "run"
    args = [*FAULT, "--arch", "mlp", "--paths", "bezier", "--epochs", "1", "--curve-epochs", "1",
            "--workers", "2", "--out", str(out)]
    monkeypatch.setenv("ROBUSTPATH_SWEEP_FAULT", "curve:always")
    assert bench.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: curve ") and "injected fault" in err[0]
    assert "rerun the same command to resume" in err[0] and "Traceback" not in err[0]
    assert not (out / "records.csv").exists()
    ends = sorted((out / "ckpt" / "endpoints").glob("*.safetensors"))
    assert len(ends) == 2
    stamps = [p.stat().st_mtime_ns for p in ends]
    monkeypatch.delenv("ROBUSTPATH_SWEEP_FAULT")
    assert bench.main(args) == 0
    assert (out / "records.csv").is_file()
    assert [p.stat().st_mtime_ns for p in ends] == stamps  # not trained again
