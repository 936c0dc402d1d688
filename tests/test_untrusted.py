"""A run folder is untrusted input (issue 25): paths in it stay inside it, no link is
followed, no pickle runs without consent, free text never becomes markup, numerical
and resource faults end in one line. Each test reproduces a case of the issue (S1-S4,
D1-D4, D6, D7) and fails on the code before it; each checks that files outside the
folder are untouched.

Fast except the real full disk (slow tier): hand-built run folders committed through :mod:`robustpath.io.runfolder` (the
path every writer and ``report`` take), a few hundred Fashion-MNIST images where a
stage must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustpath import bench
from robustpath.errors import UserError, cli_main
from robustpath.io import runfolder
from robustpath.io.lock import RUN_LOCK, entry_lock, run_lock
from robustpath.io.store import atomic_write_text, check_writable
from robustpath.report.cli import main as report_main
from robustpath.report.escape import csv_cell, latex, md_code, md_fence, md_text
from robustpath.report.html import markdown_to_html, write_sweep_report

REPO = Path(__file__).resolve().parent.parent
TINY = ["--train-subset", "128", "--test-subset", "32", "--epochs", "1", "--curve-epochs", "1",
        "--t-points", "3", "--bn-batches", "1", "--bootstrap", "10", "--seeds", "0,1",
        "--align", "none", "--paths", "line", "--steps", "1", "--train-steps", "1",
        "--plane-grid", "0", "--no-strong", "--refine-rounds", "0", "--no-progress"]


def _one_error_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _committed_run(folder: Path) -> Path:
    """A run folder committed the way ``write_run`` commits one (sources hashed)."""
    with run_lock(folder):
        stage = runfolder.begin(folder)
        atomic_write_text(stage / "config.json", "{}\n")
        atomic_write_text(stage / "records.csv", "t\n0\n")
        atomic_write_text(stage / "tables" / "summary.md", "| a |\n")
        runfolder.commit(folder, ["config.json", "records.csv"])
    return folder


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim.txt"
    v.write_text("precious")
    return v


# ---------------------------------------------------------------- S1: manifest paths
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_s1_manifest_derived_path_outside_is_refused_by_a_bench_rerun(tmp_path, where, capsys):
    """Before: a bench rerun into the folder deleted ``../victim.txt`` (rc 0)."""
    victim = _victim(tmp_path)
    run = _committed_run(tmp_path / "run")
    m = json.loads((run / "manifest.json").read_text())
    m["derived"].append("../victim.txt" if where == "relative" else str(victim))
    (run / "manifest.json").write_text(json.dumps(m))
    rc = bench.main(TINY + ["--out", str(run), "--overwrite"])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "outside", "manifest.json")
    assert victim.read_text() == "precious"
    assert not (run / "ckpt").exists()  # refused before any work


def test_s1_staged_manifest_cannot_write_or_delete_outside(tmp_path, capsys):
    """Before: ``report`` rolled a tampered ``.staging`` forward: a file outside the run
    was overwritten and the run's records.csv and config.json deleted."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target.txt"
    target.write_text("precious")
    run = _committed_run(tmp_path / "run")
    stage = run / ".staging"
    (stage / "a").mkdir(parents=True)
    (stage / "outside").mkdir()
    (stage / "outside" / "target.txt").write_text("attacker")
    (stage / "manifest.json").write_text(json.dumps(
        {"format": 1, "files": {"a/../../outside/target.txt": "0" * 64}, "derived": []}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and ".staging" not in str(p)}
    assert report_main([str(run)]) == 2
    _one_error_line(capsys.readouterr().err, "outside", "refusing")
    assert target.read_text() == "precious"
    for p, data in before.items():
        if p.name != RUN_LOCK:
            assert p.read_bytes() == data, p


def test_s1_symlinked_subfolder_is_refused(tmp_path, capsys):
    """``tables`` pointing outside would redirect report's rewrites there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = _committed_run(tmp_path / "run")
    shutil.rmtree(run / "tables")
    (run / "tables").symlink_to(elsewhere, target_is_directory=True)
    assert report_main([str(run)]) == 2
    _one_error_line(capsys.readouterr().err, "symbolic link")
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------- S2: links
@pytest.mark.parametrize("which", ["run", "entry"])
def test_s2_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, which):
    """Before: the holder record ``{"pid": ...}`` replaced the link target's content."""
    victim = _victim(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    if which == "run":
        (folder / RUN_LOCK).symlink_to(victim)
        ctx = run_lock(folder)
    else:
        (folder / ".endpoint_0.safetensors.lock").symlink_to(victim)
        ctx = entry_lock(folder / "endpoint_0.safetensors")
    with pytest.raises(UserError, match="symbolic link"):
        with ctx:
            pass
    assert victim.read_text() == "precious"


def test_s2_report_on_a_run_with_a_symlinked_lock(tmp_path, capsys):
    victim = _victim(tmp_path)
    run = _committed_run(tmp_path / "run")
    (run / RUN_LOCK).unlink()
    (run / RUN_LOCK).symlink_to(victim)
    assert report_main([str(run)]) == 2
    _one_error_line(capsys.readouterr().err, "symbolic link")
    assert victim.read_text() == "precious"


def test_s2_atomic_writes_and_the_write_probe_replace_links_not_targets(tmp_path):
    victim = _victim(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "records.csv").symlink_to(victim)
    (folder / ".write-probe").symlink_to(victim)
    atomic_write_text(folder / "records.csv", "new")
    check_writable(folder)
    assert victim.read_text() == "precious"
    assert (folder / "records.csv").read_text() == "new" and not (folder / "records.csv").is_symlink()


# ---------------------------------------------------------------- D3: lock deleted
def test_d3_lock_deleted_during_a_run_stops_the_commit(tmp_path):
    """Before: deleting the lock file let a second writer in; both exited 0 and the
    folder ended without records.csv or config.json."""
    run = _committed_run(tmp_path / "run")
    with run_lock(run):
        stage = runfolder.begin(run)
        atomic_write_text(stage / "records.csv", "t\n1\n")
        (run / RUN_LOCK).unlink()  # someone "cleans up"; a second writer could lock anew
        (run / RUN_LOCK).write_text("")
        with pytest.raises(UserError, match="deleted or replaced"):
            runfolder.commit(run, ["records.csv"])
    assert (run / "records.csv").read_text() == "t\n0\n"  # the old run, whole
    assert runfolder.verify(run) is not None


# ---------------------------------------------------------------- D1: not a run
def test_d1_report_on_a_folder_that_is_not_a_run_touches_nothing(tmp_path, capsys):
    """Before: it deleted ``.editor-swap.tmp``, ``plots/.draft.tmp`` and ``.staging/``,
    then left a lock file behind."""
    folder = tmp_path / "notes"
    (folder / "plots").mkdir(parents=True)
    (folder / ".staging").mkdir()
    for f in (".editor-swap.tmp", "plots/.draft.tmp", ".staging/mine.txt"):
        (folder / f).write_text("keep")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert report_main([str(folder)]) == 2
    _one_error_line(capsys.readouterr().err, "not a run folder", "nothing was touched")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


# ---------------------------------------------------------------- S3: pickles
class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling creates the marker file
        return (open, (self.marker, "w"))


def test_s3_no_pickle_runs_whatever_the_environment(tmp_path, monkeypatch):
    """Before: with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, loading a crafted checkpoint
    without --trust-checkpoints ran its payload."""
    from robustpath.zoo import access
    from robustpath.zoo.rbcompat import import_robustbench

    try:
        import_robustbench()
    except UserError as e:
        pytest.skip(str(e))
    name = "TinyUntrusted2099_WRN"

    def wrn():
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet

        return WideResNet(depth=10, widen_factor=1)

    monkeypatch.setenv("ROBUSTPATH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setitem(access.registry("cifar10", "Linf"), name, {"model": wrn, "gdrive_id": "x"})
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save({"state_dict": _Payload(marker)}, folder / f"{name}.pt")
    with pytest.raises(UserError, match="trust-checkpoints"):
        access.load(name, tmp_path / "models", "cifar10", "Linf")
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored
    assert torch.load.__module__ == "torch.serialization"
    # the control: with consent the payload does run (so the check above can fail)
    with pytest.raises(UserError):
        access.load(name, tmp_path / "models", "cifar10", "Linf", trust_checkpoint=True)
    assert marker.exists()


# ---------------------------------------------------------------- S4: escaping
def test_s4_escape_functions():
    assert "\n" not in md_text("a\n# heading") and md_text("a|b") == r"a\|b"
    assert md_text("<img src=x onerror=alert(1)>").startswith(r"\<img")
    assert md_text("snake_case stays") == "snake_case stays"
    assert md_code("a`b") == "``a`b``"
    assert md_fence("x\n```\ny")[0] == "````"
    assert latex(r"a_b & c % $x$ #1 {y} ~ ^ \input{z}") == (
        r"a\_b \& c \% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} "
        r"\textbackslash{}input\{z\}")
    assert csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and csv_cell("-0.5") == "-0.5"
    assert csv_cell("@SUM(A1)") == "'@SUM(A1)" and csv_cell("plain") == "plain"


def test_s4_markdown_table_cells_and_pipes_survive_html():
    page = markdown_to_html("| A | B |\n|---|---|\n| " + md_text("x|y") + " | " + md_text("*z*")
                            + " |\n")
    assert "<td>x|y</td>" in page and "<td>*z*</td>" in page


def test_s4_sweep_description_cannot_break_out_of_its_code_block(tmp_path):
    """Before: a description holding a ``` line ended the code block: a local file was
    embedded as base64, a remote image requested, raw HTML carried into report.md."""
    import base64

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nSECRET-BYTES")
    sweep = tmp_path / "sweep"
    (sweep / "aggregate").mkdir(parents=True)
    desc = (f"x\n```\n![leak]({secret})\n![remote](http://example.com/p.png)\n"
            "<img src=x onerror=alert(1)>\n# heading\n")
    (sweep / "sweep.toml").write_text(f'name = "s"\ndescription = """{desc}"""\n')
    (sweep / "command.txt").write_text("python -m robustpath.sweep s.toml --out 'a\n# b'\n")
    (sweep / "aggregate" / "summary.md").write_text(f"| a |\n|---|\n| ![x]({secret}) |\n")
    write_sweep_report(sweep, {"name": "s\n# injected"})
    html = (sweep / "aggregate" / "report.html").read_text()
    md = (sweep / "aggregate" / "report.md").read_text()
    assert base64.b64encode(secret.read_bytes()).decode()[:16] not in html
    assert "http://example.com" not in html.split("<pre>")[0]  # only as text in the block
    assert 'src="http' not in html and "href=" not in html and "<img src=x" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "\n# injected" not in md and "<h1>injected" not in html
    fence = md.split("## Sweep file\n\n")[1].split("\n")[0]
    assert len(fence) > 3 and set(fence) == {"`"}  # longer than the ``` inside


def test_s4_html_embeds_only_the_runs_own_pngs(tmp_path):
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    (run / "plots" / "ok.png").write_bytes(b"\x89PNG own")
    (tmp_path / "out.png").write_bytes(b"\x89PNG outside")
    page = markdown_to_html("![a](plots/ok.png)\n\n![b](../out.png)\n\n![c](https://x.org/c.png)",
                            base=run)
    assert page.count("data:image/png;base64,") == 1
    assert "x.org" not in page.replace("https://x.org/c.png", "") or 'src="https' not in page
    assert 'src="https' not in page and "image not embedded" in page


def test_s4_latex_and_markdown_tables_escape_free_text():
    from robustpath.report.tables import to_latex, to_markdown

    summary = pd.DataFrame({"align": ["none"], "curve": [r"\input{/etc/passwd}|x_y$"],
                            "pairs": [1]})
    tex = to_latex(summary, caption="c")
    assert r"\input" not in tex and r"\textbackslash{}input\{/etc/passwd\}" in tex
    md = to_markdown(summary)
    assert md.splitlines()[2].count("|") - md.splitlines()[2].count(r"\|") == 3


# ---------------------------------------------------------------- D4, D6: duplicates
def test_d4_mirrored_seed_pairs_in_a_sweep_are_refused(tmp_path):
    from robustpath.sweep.spec import load_sweep

    f = tmp_path / "s.toml"
    f.write_text('name = "s"\n[grid]\nseed_pairs = [[0, 1], [1, 0]]\n')
    with pytest.raises(UserError, match="mirrored"):
        load_sweep(f)


@pytest.mark.parametrize("flag,value", [("--align", "none,none"), ("--paths", "line,line")])
def test_d6_duplicate_align_or_paths_refused_before_any_work(tmp_path, flag, value, capsys):
    """Before: all the work ran, then "records.csv and examples.npz disagree on the t
    grid", with .staging left behind."""
    args = list(TINY)
    args[args.index(flag) + 1] = value
    assert bench.main(args + ["--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys.readouterr().err, flag, "distinct")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--lr", "1e300"), ("--curve-lr", "-1")])
def test_learning_rates_out_of_range_are_refused(tmp_path, flag, value, capsys):
    assert bench.main(TINY + [flag, value, "--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys.readouterr().err, flag)


def test_sweep_cpus_out_of_range_are_refused(tmp_path):
    from robustpath.sweep.spec import load_sweep

    f = tmp_path / "s.toml"
    f.write_text('name = "s"\n[grid]\nseeds = [0, 1]\n[resources]\ncpus = 1e9\n')
    with pytest.raises(UserError, match="cpus"):
        load_sweep(f)


# ---------------------------------------------------------------- D2: divergence
def test_d2_diverging_endpoint_training_stops_at_once_and_caches_nothing(tmp_path, fmnist):
    """Before: NaN weights were cached and the cell failed far later with a misleading
    message."""
    from robustpath.attacks.base import AttackConfig
    from robustpath.io.store import checkpoint_exists
    from robustpath.train.loop import TrainConfig, train_endpoint

    x_tr, y_tr, x_te, y_te = fmnist
    data = (x_tr[:128], y_tr[:128], x_te[:32], y_te[:32])
    cfg = TrainConfig(seed=0, epochs=2, lr=1e30, train_subset=128, test_subset=32,
                      attack=AttackConfig(eps=0.1, steps=1),
                      eval_attack=AttackConfig(eps=0.1, steps=1, seed=0))
    with pytest.raises(UserError, match=r"endpoint training diverged \(seed 0, epoch \d.*--lr"):
        train_endpoint(cfg, tmp_path / "endpoint", progress=False, data=data)
    assert not checkpoint_exists(tmp_path / "endpoint")
    _all_saved_finite(tmp_path)


def _all_saved_finite(folder: Path) -> None:
    from safetensors.torch import load_file

    for f in folder.rglob("*.safetensors"):  # earlier epochs' resume states may stay
        assert all(t.isfinite().all() for t in load_file(f).values()
                   if t.is_floating_point()), f


def test_d2_diverging_curve_fit_stops_at_once(tmp_path, fmnist):
    from robustpath import models
    from robustpath.attacks.base import AttackConfig
    from robustpath.paths.curves import build_curve
    from robustpath.paths.fit import CurveTrainConfig, train_curve

    torch.manual_seed(0)
    a = models.create("cnn-small", "fashion-mnist", 0.25)
    b = models.create("cnn-small", "fashion-mnist", 0.25)
    cfg = CurveTrainConfig(epochs=2, batch_size=64, lr=1e30, seed=3,
                           attack=AttackConfig(eps=0.1, steps=1))
    with pytest.raises(UserError, match=r"curve training diverged \(bezier path.*--curve-lr"):
        train_curve(build_curve("bezier", a, b), fmnist[0][:128], fmnist[1][:128], cfg,
                    tmp_path / "curve", progress=False)
    _all_saved_finite(tmp_path)


# ---------------------------------------------------------------- D7: resources
def test_d7_impossible_allocation_is_one_line(tmp_path, capsys):
    """Before: --width 1e9 (a 576 GB allocation) ended in a raw traceback."""
    assert bench.main(TINY + ["--width", "1e9", "--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys.readouterr().err, "out of memory", "--width")


def test_d7_errors_in_cli_main_name_what_ran_out(capsys):
    import errno

    @cli_main
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/records.csv")

    assert full() == 2
    _one_error_line(capsys.readouterr().err, "disk is full", "/x/records.csv")


@pytest.mark.slow  # a bench run up to its first checkpoint write: ~35 s on 2 cores
def test_d7_disk_full_during_a_run_is_one_line_and_leaves_nothing_half_written(tmp_path):
    """A real full disk: the run's folder on a 256 KB tmpfs (in a user+mount namespace)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here to mount a small tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "ROBUSTPATH_OFFLINE": "1"}
    bench_cmd = " ".join([sys.executable, "-m", "robustpath.bench", *TINY, "--out",
                          str(mnt / "run")])
    check = ("import json, sys; from pathlib import Path; from robustpath.io.store import "
             "load_checkpoint\nfor j in Path(sys.argv[1]).rglob('*.json'):\n"
             "    m = json.loads(j.read_text())\n"
             "    if isinstance(m, dict) and 'content' in m: load_checkpoint(j.with_suffix(''))\n"
             "    print('OK', j)\n")
    script = (f"mount -t tmpfs -o size=256k tmpfs {mnt} && {bench_cmd}; rc=$?; "
              f"find {mnt} -name '*.tmp' | sed 's/^/TMP /'; "
              f"{sys.executable} -c \"{check}\" {mnt} || echo BAD; exit $rc")
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    _one_error_line(p.stderr.split("Traceback")[0], "disk is full")
    # no temporary left, and every sidecar there (the "complete" marker) verified its
    # checkpoint: nothing half-written passes for a result
    assert "TMP " not in p.stdout and "BAD" not in p.stdout, p.stdout




def test_s1_sweep_cell_folder_outside_the_sweep_is_refused(tmp_path, capsys):
    """``report SWEEP`` locks and rewrites every cell folder that sweep.json names."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"name": "s", "cells": [
        {"name": "c", "group": "g", "dir": "../elsewhere", "seeds": [0, 1]}]}))
    assert report_main([str(sweep)]) == 2
    _one_error_line(capsys.readouterr().err, "outside", "sweep.json")
    assert list(elsewhere.iterdir()) == []


def test_cached_files_dated_in_the_future_are_not_computed_now(tmp_path, monkeypatch):
    """tasks.json marked cached tasks as computed when their files' times were in the
    future (``touch -d 2100``, a copy from a machine with a fast clock)."""
    from robustpath.config import from_preset
    from robustpath.engine import nodes
    from robustpath.engine.plan import Node

    (tmp_path / "cached.bin").write_text("x")
    os.utime(tmp_path / "cached.bin", (4.1e9, 4.1e9))  # the year 2099
    (tmp_path / "fresh.bin").write_text("x")
    stage = "test-future-times"
    if stage not in nodes.RUNNERS:
        nodes.RUNNERS.register(stage)(
            lambda node, *a, **k: {"files": [node.params["file"]]})
    cfg = from_preset("quick", train_subset=64, test_subset=16)
    ctx = nodes.Context(str(tmp_path))
    old = nodes.call_node(Node("a", stage, cfg, {"file": "cached.bin"}), ctx)
    assert "error" not in old and old["computed"] is False
    os.utime(tmp_path / "fresh.bin")  # written "now", by the task
    new = nodes.call_node(Node("b", stage, cfg, {"file": "fresh.bin"}), ctx)
    assert new["computed"] is True
