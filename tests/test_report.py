"""The run report, its rebuild from a copy without ckpt/, and the comparison of runs.

Run folders are written by the real :func:`robustpath.io.outputs.write_run` from
synthetic per-example results (no training), so each test takes about a second.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from robustpath.config import BenchConfig
from robustpath.errors import UserError
from robustpath.io.outputs import RunOutputs, write_run
from robustpath.io.records import PathRecord
from robustpath.io.store import sha256_file
from robustpath.paths.evaluate import PathResult
from robustpath.report.cli import main as report_main

N, T = 120, 5


def _result(seed: int, dip: float) -> PathResult:
    rng = np.random.default_rng(seed)
    ts = np.linspace(0, 1, T)
    bump = np.sin(np.pi * ts)[:, None]
    u = rng.random((T, N))
    clean = u < 0.85 - 0.2 * dip * bump
    robust = u < 0.6 - 0.4 * dip * bump
    closs = (0.4 + 0.6 * dip * bump + 0.2 * rng.random((T, N))).astype(np.float32)
    return PathResult(ts=ts, speed=np.ones(T), clean_correct=clean, robust_correct=robust,
                      clean_loss=closs, robust_loss=(closs + 0.5).astype(np.float32))


def _plane(scale: float) -> dict[str, np.ndarray]:
    xs, ys = np.linspace(-3, 13, 9) * scale, np.linspace(-3, 5, 7)
    gx, gy = np.meshgrid(xs, ys)
    bowl = 0.3 + 0.02 * (gx - 5 * scale) ** 2 + 0.3 * (gy - 1) ** 2
    t = np.linspace(0, 1, 41)
    ctrl = np.array([5.0 * scale, 2.0])
    curve = (1 - t)[:, None] ** 2 * 0 + 2 * (t * (1 - t))[:, None] * ctrl \
        + (t ** 2)[:, None] * np.array([10.0 * scale, 0])
    return {"xs": xs, "ys": ys, "clean_loss": bowl, "robust_loss": bowl * 1.8 + 0.2,
            "curve_xy": curve, "line_xy": np.array([[0, 0], [10.0 * scale, 0]]),
            "control_xy": ctrl, "out_of_plane": np.zeros(21)}


def _write(run_dir, *, test_subset=1000, dip_b=1.0, planes=True, eps=8 / 255):
    cfg = BenchConfig(dataset="cifar10", arch="tinyten", eps=eps, align=["none", "activation"],
                      paths=["line", "bezier"], bootstrap=200, test_subset=test_subset,
                      plane_grid=9 if planes else 0, out=str(run_dir))
    recs = [PathRecord("none", "line", 0, 1, _result(1, 1.0)),
            PathRecord("none", "bezier", 0, 1, _result(2, 0.3)),
            PathRecord("activation", "line", 0, 1, _result(3, 0.5)),
            PathRecord("activation", "bezier", 0, 1, _result(4, 0.1 * dip_b))]
    out = RunOutputs(records=recs, stages={"plane": {
        "none-bezier-s0-1": ("none", _plane(1.0)),
        "activation-bezier-s0-1": ("activation", _plane(0.8))}} if planes else {},
                     timings={"stages": [{"stage": "endpoint", "calls": 2, "seconds": 12.5},
                                         {"stage": "curve", "calls": 4, "seconds": 3.25}],
                              "total": 20.0})
    write_run(run_dir, cfg, out, command="python -m robustpath.bench --eps 8/255")
    return recs


DERIVED = ["report.html", "report.md", "plots/paths.png", "plots/paths.pdf", "plots/plane.png",
           "plots/plane.pdf", "tables/summary.md", "tables/summary.tex", "tables/summary.csv",
           "tables/per_path.csv", "summary.json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep") / "run"
    _write(d)
    return d


def test_run_writes_report_and_plane_data(run):
    for name in DERIVED + ["plane.npz", "timings.json"]:
        assert (run / name).is_file(), name
    html = (run / "report.html").read_text()
    # self-contained: every figure inlined, nothing fetched from elsewhere
    assert html.count("data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=\"https?:", html)
    for text in ("Summary", "Robust loss barrier", "Stage timings", "Configuration",
                 "Paired differences",
                 "python -m robustpath.bench --eps 8/255", "Provenance", "8/255", "Warnings"):
        assert text in html, text
    assert "0.0313" not in html and "0.0314" not in html  # eps as a fraction, not a decimal
    assert re.search(r"endpoint</td><td>2</td><td>12.5</td>.*curve</td><td>4</td><td>3.2", html,
                     re.S)  # stage timings in the order the stages ran
    md = (run / "report.md").read_text()
    assert "![" in md and "(plots/paths.png)" in md and "(plots/plane.png)" in md


def test_report_rebuilds_everything_byte_identical_without_ckpt(run, tmp_path):
    before = {n: (run / n).read_bytes() for n in DERIVED}
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ckpt"))
    for n in DERIVED:
        (copy / n).unlink()
    assert report_main([str(copy)]) == 0
    for n in DERIVED:
        assert (copy / n).read_bytes() == before[n], f"{n} differs after the rebuild"


def test_summary_json_and_glossary(run):
    import json

    from robustpath.report import metric_registry
    from robustpath.report.run import format_summary

    d = json.loads((run / "summary.json").read_text())
    assert d["schema"] == "robustpath.summary/1"
    assert (d["dataset"], d["threat_model"], d["eps_text"]) == ("cifar10", "Linf", "8/255")
    assert d["attack"]["name"] == "pgd" and d["code_revision"] == json.loads(
        (run / "provenance.json").read_text())["git"]
    summary = pd.read_csv(run / "tables" / "summary.csv")
    row = next(r for r in d["rows"] if (r["align"], r["curve"]) == ("none", "line"))
    assert row["endpoints"] == [[0, 1]] and row["pairs"] == 1
    m = row["metrics"]["robust_acc_min"]
    csv = summary[(summary["align"] == "none") & (summary["curve"] == "line")].iloc[0]
    assert (m["value"], m["lo"], m["hi"]) == pytest.approx(
        (csv["robust_acc_min"], csv["robust_acc_min_lo"], csv["robust_acc_min_hi"]))
    assert m["interval_method"] in d["interval_methods"] and m["unit"] == "fraction"
    # every summary column is declared once, and the page prints its definition
    html = (run / "report.html").read_text()
    assert "Glossary" in html
    for col in summary.columns:
        base = re.sub(r"_(std|lo|hi)$", "", col)
        if base not in ("align", "curve", "pairs"):
            assert base in metric_registry.METRICS, base
            assert f"<code>{base}</code>" in html, base
    assert "n/a" not in (run / "report.md").read_text()  # one seed pair: no "± n/a" cells
    text = format_summary(summary, json.loads((run / "config.json").read_text()))
    assert max(len(line) for line in text.splitlines()) <= 100


def test_report_rebuilds_a_folder_written_with_seed_columns(run, tmp_path):
    """Folders written before endpoints were named by id have ``seed_a``/``seed_b``:
    records.read renames them, the report rebuilds the same tables, and the folder's
    records.csv is left as it was."""
    from robustpath.io.records import read as read_records

    before = {n: (run / n).read_bytes() for n in DERIVED}
    copy = tmp_path / "old"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ckpt"))
    text = (copy / "records.csv").read_text()
    header, rest = text.split("\n", 1)
    assert ",endpoint_a,endpoint_b," in header
    old = header.replace("endpoint_a", "seed_a").replace("endpoint_b", "seed_b") + "\n" + rest
    (copy / "records.csv").write_text(old)
    manifest = json.loads((copy / "manifest.json").read_text())  # as such a run wrote it
    manifest["files"]["records.csv"] = sha256_file(copy / "records.csv")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for n in DERIVED:
        (copy / n).unlink()
    recs = read_records(copy)
    assert [r.endpoints for r in recs] == [(0, 1)] * 4
    assert all(type(e) is int for r in recs for e in r.endpoints)
    assert [r.path_id for r in recs] == [r.path_id for r in read_records(run)]
    assert report_main([str(copy)]) == 0
    for n in DERIVED:
        assert (copy / n).read_bytes() == before[n], f"{n} differs after the rebuild"
    assert (copy / "records.csv").read_text() == old


def test_records_name_zoo_endpoints_by_model_name(tmp_path):
    """Zoo endpoints are model names (not indices): written, read back as str, and the
    path id keeps them apart from seed pairs; report.check_records accepts them."""
    from robustpath.io import records
    from robustpath.report.run import check_records

    a, b = "Wong2020Fast", "Singh2023Revisiting_ConvNeXt-T-ConvStem"
    recs = [PathRecord("none", "line", a, b, _result(1, 1.0)),
            PathRecord("weight", "bezier", a, b, _result(2, 0.3))]
    assert recs[0].path_id == f"none-line-{a}__{b}"
    assert PathRecord("none", "line", np.int64(0), 1, recs[0].result).path_id == "none-line-s0-1"
    records.write(tmp_path, recs)
    frame = pd.read_csv(tmp_path / "records.csv")
    assert list(frame.columns[:5]) == ["path_id", "align", "curve", "endpoint_a", "endpoint_b"]
    assert set(frame["endpoint_a"]) == {a} and set(frame["endpoint_b"]) == {b}
    back = records.read(tmp_path)
    assert [(r.align, r.curve, r.endpoints) for r in back] == [
        ("none", "line", (a, b)), ("weight", "bezier", (a, b))]
    assert [r.path_id for r in check_records(tmp_path)] == [r.path_id for r in recs]
    # an edited endpoint no longer matches its path id: refused in one line
    (tmp_path / "records.csv").write_text(
        (tmp_path / "records.csv").read_text().replace(f",{b},", ",Other2020,", 1))
    with pytest.raises(UserError, match="path_id does not match"):
        check_records(tmp_path)


def test_report_shows_strong_eval_and_transfer_files(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ckpt"))
    # the file's title as robustpath.strong.files writes it: not repeated under the section
    (copy / "strong_eval.md").write_text("# Strong evaluation\n\n| t | AutoAttack |\n|---|---|\n"
                                         "| 0.5 | 41.0 |\n")
    (copy / "transfer.md").write_text("- WARNING: possible gradient masking at t=0.5\n")
    assert report_main([str(copy)]) == 0
    html = (copy / "report.html").read_text()
    assert "Strong evaluation" in html and "<td>41.0</td>" in html
    assert "Transfer attacks" in html and "gradient masking" in html
    assert (copy / "report.md").read_text().count("Strong evaluation") == 1


def test_strong_evaluation_is_one_row_per_path(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ckpt"))
    rows = []
    for pid, align, curve in (("none-line-s0-1", "none", "line"),
                              ("activation-bezier-s0-1", "activation", "bezier")):
        for role, t, pgd, aa in (("a", 0.0, 0.6, 0.5), ("b", 1.0, 0.7, 0.6),
                                 ("worst", 0.5, 0.2, 0.125)):
            rows.append({"path_id": pid, "align": align, "curve": curve, "endpoint_a": 0,
                         "endpoint_b": 1, "role": role, "t": t, "n": 16, "clean_acc": 0.8,
                         "robust_acc_pgd": pgd, "robust_acc_aa": aa, "robust_acc_pgd_many": aa,
                         "robust_acc_worst": aa, "gap_pgd_aa": pgd - aa,
                         "masking": role == "worst" and align == "none",
                         "clean_matches_path": True})
    pd.DataFrame(rows).to_csv(copy / "strong_eval.csv", index=False)
    assert report_main([str(copy)]) == 0
    md = (copy / "report.md").read_text()
    section = md.split("## Strong evaluation")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2  # header + one row per path, not per attacked point
    assert "AutoAttack at worst t" in table[0] and "robust_acc_aa" not in table[0]
    assert "| unaligned | line | 0,1 | 16 | 0.500 | 80.0 | 65.0 | 55.0 | 20.0 | 12.5 |" in section
    assert "**1 FLAG**" in section and "`strong_eval.csv`" in section


def test_tables_and_titles_write_eps_as_a_fraction(run):
    assert "8/255" in (run / "tables" / "summary.tex").read_text()
    assert "0.03137" not in (run / "tables" / "summary.tex").read_text()


def test_compare_runs_with_paired_differences(run, tmp_path, capsys):
    other = tmp_path / "b"
    recs_b = _write(other, dip_b=4.0, planes=False)
    far = tmp_path / "c"
    _write(far, test_subset=500, planes=False)
    out = tmp_path / "cmp"

    def snapshot():
        return {f: sha256_file(f) for d in (run, other, far) for f in sorted(d.rglob("*"))
                if f.is_file()}

    before = snapshot()
    assert report_main([str(run), str(other), str(far), "--compare-out", str(out)]) == 0
    assert snapshot() == before  # the compared runs are only read
    table = (out / "comparison.md").read_text()
    assert table.startswith("| Run |")
    assert table.count("| run |") == 4 and table.count("| b |") == 4  # every path, each run
    assert "[" in table  # the runs' own CIs
    diff = pd.read_csv(out / "differences.csv")
    assert set(diff["run"]) == {"b"}  # c has other test examples: no paired differences
    assert "different test_subset" in (out / "differences.md").read_text()
    same = diff[diff["curve"] == "line"]
    # identical per-example results: difference 0 with a CI of exactly [0, 0]
    assert np.allclose(same[["robust_acc_min", "robust_acc_min_lo", "robust_acc_min_hi"]], 0)
    changed = diff[(diff["align"] == "activation") & (diff["curve"] == "bezier")].iloc[0]
    base = _result(4, 0.1).robust_correct.mean(1).min()
    assert changed["robust_acc_min"] == pytest.approx(
        recs_b[3].result.robust_correct.mean(1).min() - base, abs=1e-6)  # CSV: 6 decimals
    assert changed["robust_acc_min_lo"] <= changed["robust_acc_min"] <= changed["robust_acc_min_hi"]
    assert changed["robust_acc_min_hi"] < 0  # a real drop, resolved by the paired CI
    assert "comparison" in capsys.readouterr().out
    assert (out / "comparison.html").read_text().count("<table>") == 3  # settings, paths, diffs
    settings = (out / "settings.md").read_text()
    assert "| test_subset | 1000 | 1000 | 500 |" in settings and "plane_grid" in settings
    assert "| eps |" not in settings  # only what differs


def test_compare_says_which_paths_were_not_paired():
    from robustpath.report.compare import unpaired

    base = [PathRecord("none", "line", 0, 1, _result(1, 1.0)),
            PathRecord("none", "bezier", 0, 1, _result(2, 0.3))]
    other = [PathRecord("none", "line", 0, 1, _result(1, 1.0)),
             PathRecord("none", "line", 2, 3, _result(3, 1.0))]
    assert unpaired(base, other) == ["none-line-s2-3: only in the run",
                                     "none-bezier-s0-1: only in the baseline"]


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_tracking_reads_every_metric_from_the_run_folder(run):
    from robustpath.report.tracking import scalars

    tags = {}
    for tag, value, step in scalars(run):
        tags.setdefault(tag, []).append((step, value))
    rec = pd.read_csv(run / "records.csv")
    row = rec[(rec["path_id"] == "none-line-s0-1") & (rec["t"] == 0.5)].iloc[0]
    assert (500, pytest.approx(row["robust_acc"])) in tags["path/none-line-s0-1/robust_acc"]
    summary = pd.read_csv(run / "tables" / "summary.csv")
    barrier = summary[(summary["align"] == "none") & (summary["curve"] == "line")].iloc[0]
    assert tags["summary/none-line/robust_loss_barrier"] == [
        (0, pytest.approx(barrier["robust_loss_barrier"]))]


@pytest.mark.skipif(_has("tensorboard"), reason="tensorboard installed")
def test_tensorboard_without_the_package_is_one_line_exit_2(run, capsys):
    from robustpath.report.tracking import main as tracking_main

    assert tracking_main([str(run)]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err


@pytest.mark.skipif(not _has("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_writes_event_files(run, tmp_path):
    from robustpath.report.tracking import log_tensorboard

    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ckpt"))
    logdir = log_tensorboard(copy)
    assert any(f.name.startswith("events.out.tfevents") for f in logdir.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(run, tmp_path):
    import subprocess

    out = tmp_path / "shot.png"
    subprocess.run(["bash", "scripts/screenshot_report.sh", str(run), str(out), "1000,1400"],
                   check=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(out).convert("L"), dtype=np.float64)
    assert img.shape == (1400, 1000)
    assert img.std() > 20  # text, tables and figures drawn, not a blank page


def test_paired_differences_pool_several_seed_pairs():
    from robustpath.report.compare import paired_differences

    base = [PathRecord("none", "line", 2 * s, 2 * s + 1, _result(10 + s, 1.0)) for s in range(3)]
    other = [PathRecord("none", "line", 2 * s, 2 * s + 1, _result(10 + s, 1.0 + 0.5 * s))
             for s in range(3)]
    rows = paired_differences(base, other, bootstrap=200)
    per_pair = [r for r in rows if r["pairs"] == 1]
    pooled = [r for r in rows if r["endpoint_a"] == "all"]
    assert len(per_pair) == 3 and len(pooled) == 1 and pooled[0]["pairs"] == 3
    p = pooled[0]
    for m in ("robust_acc_min", "robust_loss_barrier"):
        assert p[m] == pytest.approx(np.mean([r[m] for r in per_pair]))
        assert p[f"{m}_lo"] <= p[m] <= p[f"{m}_hi"]
    # the pair s=0 is unchanged, so the pooled CI (over pairs) reaches towards 0 and is
    # wider than the changed pairs' CIs over examples alone
    assert p["robust_loss_barrier_hi"] - p["robust_loss_barrier_lo"] > \
        per_pair[2]["robust_loss_barrier_hi"] - per_pair[2]["robust_loss_barrier_lo"]
    same = paired_differences(base, base, bootstrap=200)
    assert all(r[k] == 0 for r in same for k in ("robust_acc_min", "robust_acc_min_lo",
                                                   "robust_acc_min_hi"))
