"""Hostile inputs to the newer command lines (soup, bench --curvature, zoo compare,
report --against): each must end in one ``error:`` line and exit code 2 before any
work, never a traceback or a half-written folder. One test per defect found in review."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from robustpath import bench
from robustpath.report import cli as report
from robustpath.soup import cli as soup_cli
from robustpath.zoo.cli import main as zoo_main

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "results" / "fashion-mnist-cnn-small-quick"
TINY = ["--epochs", "1", "--train-subset", "64", "--test-subset", "16", "--steps", "1",
        "--train-steps", "1", "--no-progress", "--device", "cpu"]


def _one_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for w in words:
        assert w in err, err
    return err


def test_soup_empty_out_is_refused_not_the_current_folder(tmp_path, monkeypatch, capsys):
    # before: Path("") is "." - the whole soup run trained and wrote into the cwd
    monkeypatch.chdir(tmp_path)
    assert soup_cli.main([*TINY, "--out", ""]) == 2
    _one_error(capsys, "--out")
    assert list(tmp_path.iterdir()) == []


def test_soup_merge_seed_out_of_range_fails_before_training(tmp_path, capsys):
    # before: -1 was accepted; 2**64 trained every endpoint, then a numpy overflow traceback
    for seed in ("-1", str(2 ** 64)):
        assert soup_cli.main([*TINY, "--merge-seed", seed, "--out", str(tmp_path / "r")]) == 2
        _one_error(capsys, "--merge-seed")
    assert not (tmp_path / "r").exists()


def test_bench_negative_test_subset_names_the_test_subset(capsys):
    # before: "--curvature 0 exceeds --test-subset -1"
    assert bench.main([*TINY, "--test-subset", "-1", "--out", "unused"]) == 2
    err = _one_error(capsys, "--test-subset")
    assert "--curvature" not in err


def test_bench_curvature_beyond_all_test_examples_fails_before_training(tmp_path, capsys):
    # before: --test-subset 0 (all 10,000) let --curvature 10001 through; it failed in the
    # curvature stage, after endpoints and curves were trained
    out = tmp_path / "run"
    argv = [*TINY, "--test-subset", "0", "--curvature", "10001", "--out", str(out)]
    assert bench.main(argv) == 2
    _one_error(capsys, "--curvature", "1..10000")
    assert not out.exists()


def test_zoo_linf_eps_above_the_pixel_range_is_refused(tmp_path, capsys):
    # before: --eps 2 under Linf passed validation (bench refuses it)
    rc = zoo_main(["compare", "--models", "A,B", "--eps", "2", "--model-dir", str(tmp_path),
                   "--out", str(tmp_path / "run")])
    assert rc == 2
    _one_error(capsys, "pixel range")
    assert not (tmp_path / "run").exists()


def _copy_summary(tmp_path: Path, name: str) -> tuple[Path, pd.DataFrame]:
    run = tmp_path / name
    shutil.copytree(RUN / "tables", run / "tables")
    shutil.copy(RUN / "config.json", run / "config.json")  # a run folder (report touches no other)
    return run, pd.read_csv(run / "tables" / "summary.csv")


def test_against_repeated_rows_is_one_line(tmp_path, capsys):
    # before: pandas "Invalid call for scalar access" traceback
    run, table = _copy_summary(tmp_path, "dup")
    pd.concat([table, table.iloc[:1]]).to_csv(run / "tables" / "summary.csv", index=False)
    assert report.main([str(RUN), "--against", str(run)]) == 2
    _one_error(capsys, "repeated")


def test_against_text_in_a_metric_column_is_one_line(tmp_path, capsys):
    # before: "could not convert string to float" traceback
    run, table = _copy_summary(tmp_path, "txt")
    table["robust_acc_min"] = table["robust_acc_min"].astype(object)
    table.loc[0, "robust_acc_min"] = "abc"
    table.to_csv(run / "tables" / "summary.csv", index=False)
    assert report.main([str(run), "--against", str(RUN)]) == 2
    _one_error(capsys, "robust_acc_min", "not numbers")


def test_against_refuses_runs_of_different_experiments(tmp_path, capsys):
    # before: a cnn-small run was "checked" against a vit-tiny run, exit 1, values outside
    run, _ = _copy_summary(tmp_path, "other")
    cfg = json.loads((RUN / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "arch": "vit-tiny"}))
    assert report.main([str(run), "--against", str(RUN)]) == 2
    _one_error(capsys, "different experiments", "arch")


def test_zoo_compare_model_dir_that_is_a_file_says_so(tmp_path, capsys):
    # before: "checkpoint of A not found: expected <file>/cifar10/Linf/A.pt" (list said it)
    (tmp_path / "f").write_text("x")
    rc = zoo_main(["compare", "--models", "A,B", "--model-dir", str(tmp_path / "f"),
                   "--out", str(tmp_path / "run")])
    assert rc == 2
    _one_error(capsys, "is a file, not a folder")
    assert not (tmp_path / "run").exists()


def test_soup_into_a_bench_run_folder_is_refused_before_work(tmp_path, capsys):
    # before: soup trained into the bench run's ckpt/ and replaced its config.json,
    # command.txt (the bench's manifest then no longer matched)
    run = tmp_path / "bench-run"
    run.mkdir()
    cfg = (RUN / "config.json").read_text()
    (run / "config.json").write_text(cfg)
    assert soup_cli.main([*TINY, "--out", str(run)]) == 2
    _one_error(capsys, "another kind of run")
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
    assert (run / "config.json").read_text() == cfg


def test_huge_bootstrap_fails_before_work_in_every_cli(tmp_path, capsys):
    # before: --bootstrap 10**9 was accepted; the [resamples, examples] weights array
    # raised MemoryError after every endpoint and path had been computed
    huge = str(10 ** 9)
    assert soup_cli.main([*TINY, "--bootstrap", huge, "--out", str(tmp_path / "s")]) == 2
    _one_error(capsys, "--bootstrap")
    assert bench.main([*TINY, "--bootstrap", huge, "--out", str(tmp_path / "b")]) == 2
    _one_error(capsys, "--bootstrap")
    assert zoo_main(["compare", "--models", "A,B", "--bootstrap", huge, "--model-dir",
                     str(tmp_path), "--out", str(tmp_path / "z")]) == 2
    _one_error(capsys, "--bootstrap")
    assert not any((tmp_path / n).exists() for n in "sbz")


def test_huge_t_points_and_refine_rounds_fail_before_training(tmp_path, capsys):
    # before: both were accepted and endpoint training started; 10^9 t points (a [t,
    # examples] array) or 10^6 bisection rounds (below float resolution) fail or never end
    for flag in ("--t-points", "--refine-rounds"):
        assert bench.main([*TINY, flag, str(10 ** 9), "--out", str(tmp_path / "b")]) == 2
        _one_error(capsys, flag)
        assert zoo_main(["compare", "--models", "A,B", flag, str(10 ** 9), "--model-dir",
                         str(tmp_path), "--out", str(tmp_path / "z")]) == 2
        _one_error(capsys, flag)
    assert not (tmp_path / "b").exists() and not (tmp_path / "z").exists()


@pytest.mark.parametrize("mod,argv", [
    ("stats.paired", ["/nonexistent"]), ("stats.paired", ["--bootstrap", "x", "run"]),
    ("stats.paired", ["--bootstrap", "0", "run"]), ("report.protocol", ["--preset", "nope"])])
def test_small_clis_answer_bad_input_in_one_line(mod, argv, capsys):
    """`python -m robustpath.stats.paired` / `.protocol` used plain argparse: a bad value was a
    usage block or a traceback."""
    import importlib

    rc = importlib.import_module(f"robustpath.{mod}").main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and err.count("\n") == 1


def test_strong_examples_above_the_test_subset_is_said(tmp_path, capsys):
    """The strong stage attacks min(--strong-examples, test examples): said, not silent
    (the run stops right after, at the unwritable --out, before any work)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = bench.main(TINY + ["--strong-examples", "50", "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "strong stage attacks all 16 test examples" in err
