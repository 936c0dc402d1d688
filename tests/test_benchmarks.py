"""Tools that judge results (`report --against`, the kernel bound) and a smoke run of the
performance suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustpath import report

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "results" / "fashion-mnist-cnn-small-quick"


def test_report_against_accepts_the_same_run_and_flags_a_moved_value(tmp_path, capsys):
    assert report.main([str(RUN), "--against", str(RUN)]) == 0
    first = capsys.readouterr().out
    assert "\n0 of " in first and "values outside" in first
    moved = tmp_path / "moved"
    shutil.copytree(RUN / "tables", moved / "tables")
    table = pd.read_csv(moved / "tables" / "summary.csv")
    row = (table["align"] == "activation") & (table["curve"] == "bezier")
    table.loc[row, "robust_acc_min"] = 2.0  # 200 %: outside any interval
    table.to_csv(moved / "tables" / "summary.csv", index=False)
    out = tmp_path / "check.md"
    assert report.main([str(moved), "--against", str(RUN), "--against-out", str(out)]) == 1
    assert "\n1 of " in out.read_text()
    assert "| activation | bezier | Robust min (`robust_acc_min`) |" in out.read_text()
    assert "**no**" in out.read_text().split("| activation | bezier | Robust min (`robust_acc_min`) |")[1]


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
    for section in ("PGD: ours vs torchattacks", "Path evaluation per t", "Alignment time"):
        assert section in text


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


@pytest.mark.parametrize("extra", [["--against-out", "x.md"],
                                   ["--against", "RUN", "--against-out", ""],
                                   ["--against", "RUN", "--against-out", "TMP"]])
def test_report_against_out_bad_values_are_one_line_exit_2(extra, tmp_path, capsys):
    extra = [str(RUN) if e == "RUN" else str(tmp_path) if e == "TMP" else e for e in extra]
    assert report.main([str(RUN), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--against" in err[0]
