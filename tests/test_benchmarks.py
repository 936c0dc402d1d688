"""Tools that judge results (`report --against`, the kernel bound) and a smoke run of the
performance suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustpath.report import cli as report

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "results" / "fashion-mnist-cnn-small-quick"


def test_report_against_accepts_the_same_run_and_flags_a_moved_value(tmp_path, capsys):
    assert report.main([str(RUN), "--against", str(RUN)]) == 0
    first = capsys.readouterr().out
    assert "\n0 of " in first and "values outside" in first
    moved = tmp_path / "moved"
    shutil.copytree(RUN / "tables", moved / "tables")
    shutil.copy(RUN / "config.json", moved / "config.json")  # a run folder: report reads it
    table = pd.read_csv(moved / "tables" / "summary.csv")
    row = (table["align"] == "activation") & (table["curve"] == "bezier")
    table.loc[row, "robust_acc_min"] = 2.0  # 200 %: outside any interval
    table.to_csv(moved / "tables" / "summary.csv", index=False)
    out = tmp_path / "check.md"
    assert report.main([str(moved), "--against", str(RUN), "--against-out", str(out)]) == 1
    assert "\n1 of " in out.read_text()
    assert "| activation | bezier | Robust min (grid) (`robust_acc_min`) |" in out.read_text()
    assert "**no**" in out.read_text().split("| activation | bezier | Robust min (grid) (`robust_acc_min`) |")[1]


def test_report_against_uses_the_t_interval_over_seed_pairs(tmp_path):
    """With 3 seed pairs the rerun interval is mean +- t(0.975, 2) sd / sqrt(3) (t = 4.30):
    a value 3 standard errors away is inside it, where the old 1.96 put it outside."""
    from robustpath.report.against import compare

    table = pd.read_csv(RUN / "tables" / "summary.csv")
    assert (table["pairs"] == 3).all()
    moved = tmp_path / "moved"
    shutil.copytree(RUN / "tables", moved / "tables")
    shutil.copy(RUN / "config.json", moved / "config.json")
    row = (table["align"] == "activation") & (table["curve"] == "bezier")
    se = float(table.loc[row, "robust_acc_min_std"].iloc[0]) / 3 ** 0.5
    assert se > 0
    for k, inside in ((3.0, True), (4.5, False)):
        t2 = table.copy()
        t2.loc[row, "robust_acc_min"] = float(table.loc[row, "robust_acc_min"].iloc[0]) + k * se
        t2.to_csv(moved / "tables" / "summary.csv", index=False)
        lines, outside = compare(RUN, moved)
        assert outside == (0 if inside else 1), (k, outside)


def test_report_against_bad_folder_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "robustpath.report", str(tmp_path), "--against",
                        str(RUN)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # 25 s: the performance suite is not the product; the fast tier stays < 6 min
def test_benchmarks_quick_smoke(tmp_path):
    """`python -m benchmarks --quick` (tiny sizes, about 20 s) writes every section."""
    out = tmp_path / "R.md"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--skip", "compile",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    for section in ("PGD: ours vs torchattacks", "Path evaluation per t", "Alignment time",
                    "Like-for-like: robustpath against a plain-PyTorch loop",
                    "Two cores: concurrent single-thread workers against two threads"):
        assert section in text


@pytest.mark.slow  # 40 s: two tiny bench runs in subprocesses
def test_benchmarks_default_run_section_times_1_and_2_workers(tmp_path):
    """`--only run --quick`: the bench from scratch with 1 and 2 workers, wall time and
    node-seconds per stage, and the same bytes from both."""
    out = tmp_path / "R.md"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "run",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "with 1 and 2 workers" in text and "(not the default run)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all("strong" in text and "%" in row for row in rows)
    assert "`records.csv` yes" in text and "`examples.npz` yes" in text and "**no**" not in text


@pytest.mark.slow  # 20 s on the shared 2-core machine
def test_plain_torch_loop_does_the_pipelines_work(fmnist):
    """The plain reference trains real networks: its endpoint beats chance under attack
    after one epoch, and its path evaluation measures every t on every test example."""
    from benchmarks import plain_torch

    x_tr, y_tr, x_te, y_te = (t[:n] for t, n in zip(fmnist, (1024, 1024, 100, 100)))
    s = plain_torch.Sizes(train=1024, test=100, epochs=1, curve_epochs=1, t_points=3)
    a = plain_torch.train_endpoint(0, x_tr, y_tr, x_te, y_te, s)
    b = plain_torch.train_endpoint(1, x_tr, y_tr, x_te, y_te, s)
    clean = plain_torch.evaluate(a, x_te, y_te, s)
    assert clean["clean_correct"].float().mean() > 0.3
    assert (clean["robust_loss"] >= clean["clean_loss"] - 1e-4).float().mean() > 0.9
    curve = plain_torch.PlainBezier(a, b)
    before = curve.control.detach().clone()
    plain_torch.fit_curve(curve, x_tr, y_tr, s)
    assert not torch.equal(before, curve.control.detach())
    rows = plain_torch.evaluate_path(curve, x_tr, y_tr, x_te, y_te, s)
    assert len(rows) == 3 and all(len(r["robust_correct"]) == 100 for r in rows)


def test_kernel_bound_reports_fractions_no_larger_than_its_bound():
    from benchmarks import kernel_bound

    r = kernel_bound.measure(images=20, steps=2)
    assert r["flops"] > 0 and r["peak"] > 0
    # the kernels are part of the attack: their time is below the wall time, so the
    # bound (FLOPs / kernel time) is above what the attack achieves
    assert 0 < r["kernels"] < r["profiled"]
    assert r["flops"] / r["kernels"] > r["flops"] / r["wall"]


def test_kernel_bound_bad_input_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "benchmarks.kernel_bound", "--images", "0"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_benchmarks_run_args_unbalanced_quote_is_one_line_exit_2(tmp_path):
    """`python -m benchmarks --only run --run-args '"unbalanced'`: one error line, exit 2,
    at argument parsing (it was shlex's ValueError traceback); nothing written."""
    out = tmp_path / "R.md"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "run", "--out", str(out),
                        "--run-args", '"unbalanced'], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in r.stderr, err
    assert "--run-args: not a shell-quoted string" in err[0] and not out.exists()


@pytest.mark.parametrize("run_args, says", [
    ("--arch nope", "--run-args: unknown architecture"),  # the bench's own check, before work
    ("--workers=3", "--run-args: --workers is not for section run"),  # the section sets it
    # passes the bench's flag checks, fails inside its first run (no CIFAR-10 there): the
    # bench subprocess's last line, not a RuntimeError traceback
    ("--dataset cifar10 --data-root EMPTY", "section run: the bench with 1 worker(s) failed"),
])
def test_benchmarks_run_section_bad_input_is_one_error_line(run_args, says, tmp_path, capsys,
                                                            monkeypatch):
    from benchmarks.__main__ import main as benchmarks_main

    monkeypatch.setenv("ROBUSTPATH_OFFLINE", "1")  # the bench subprocess inherits it
    (tmp_path / "empty").mkdir()
    out = tmp_path / "R.md"
    run_args = run_args.replace("EMPTY", str(tmp_path / "empty"))
    assert benchmarks_main(["--only", "run", f"--run-args={run_args}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("error")] == err[-1:], err
    assert err[-1].startswith("error: ") and says in err[-1] and not out.exists()


@pytest.mark.parametrize("extra", [["--against-out", "x.md"],
                                   ["--against", "RUN", "--against-out", ""],
                                   ["--against", "RUN", "--against-out", "TMP"]])
def test_report_against_out_bad_values_are_one_line_exit_2(extra, tmp_path, capsys):
    extra = [str(RUN) if e == "RUN" else str(tmp_path) if e == "TMP" else e for e in extra]
    assert report.main([str(RUN), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--against" in err[0]
