"""studies/ablations.py: the tables are built from the right run, path and row.

Tiny planted run folders (records written by robustpath.io.records, 40 test examples):
every path of every arm has its own known minimum, so a column taken from another
path, arm or grid gives a different number.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustpath.io.records import PathRecord, write
from robustpath.paths.evaluate import PathResult, t_grid
from studies import ablations as abl

N = 40


def planted(ts, acc_at, refined=None) -> PathResult:
    """A path whose robust accuracy at t is ``acc_at(t)`` (first k examples correct)."""
    ts = np.asarray(ts, dtype=np.float64)
    acc = np.array([acc_at(t) for t in ts])
    correct = np.arange(N)[None, :] < np.round(acc * N)[:, None]
    loss = (1.0 - acc)[:, None].repeat(N, 1).astype(np.float32)
    return PathResult(ts=ts, speed=np.ones_like(ts), clean_correct=correct | (np.arange(N) < 30),
                      robust_correct=correct, clean_loss=loss, robust_loss=loss,
                      refined=refined)


def vee(depth: float, at: float):
    """Accuracy 0.9 at the ends, falling linearly to ``depth`` at t = ``at``."""
    return lambda t: 0.9 - (0.9 - depth) * (t / at if t <= at else (1 - t) / (1 - at))


PATHS = {("none", "line"): (0.10, 0.5), ("none", "bezier"): (0.50, 0.45),
         ("activation", "line"): (0.55, 0.55), ("activation", "bezier"): (0.70, 0.4)}


def run_folder(tmp_path, name, make):
    d = tmp_path / name
    d.mkdir()
    write(d, [PathRecord(a, c, 0, 1, make(a, c)) for a, c in PATHS])
    return d


def test_t_points_table_takes_each_column_from_its_grid_and_path(tmp_path):
    def grid11(a, c):
        depth, at = PATHS[(a, c)]
        res = planted(t_grid(11), vee(depth, at))
        extra = planted([at], lambda t: depth - 0.05)  # refinement finds a lower point
        return res.merged(extra)

    def grid65(a, c):
        depth, at = PATHS[(a, c)]
        return planted(t_grid(65), vee(depth - 0.1, at))

    arms = abl.t_points_arms()
    runs = [(arms[0], run_folder(tmp_path, "t11", grid11)),
            (arms[1], run_folder(tmp_path, "t65", grid65))]
    table = abl.table_t_points(runs, bootstrap=100)
    assert len(table) == 4
    for _, r in table.iterrows():
        depth, at = PATHS[(r["align"], r["curve"])]
        grid_min = min(np.round(vee(depth, at)(t) * N) / N for t in t_grid(11))
        assert r["min_11"] == pytest.approx(100 * grid_min)
        assert r["min_11_refined"] == pytest.approx(100 * np.round((depth - 0.05) * N) / N)
        assert r["t_11_refined"] == pytest.approx(at)
        assert r["points_11"] == 12 and r["points_65"] == 65
        m65 = min(np.round(vee(depth - 0.1, at)(t) * N) / N for t in t_grid(65))
        assert r["min_65"] == pytest.approx(100 * m65)
        assert r["diff_65_minus_11r"] == pytest.approx(r["min_65"] - r["min_11_refined"])
        assert r["diff_lo"] <= r["diff_65_minus_11r"] <= r["diff_hi"]


def test_arm_tables_keep_arm_and_path_together(tmp_path):
    arms = [abl.Arm("adv-2", [], {"bn_inputs": "adv", "bn_batches": 2}),
            abl.Arm("clean-40", [], {"bn_inputs": "clean", "bn_batches": 40})]
    shift = {"adv-2": 0.0, "clean-40": 0.05}
    runs = []
    for arm in arms:
        runs.append((arm, run_folder(
            tmp_path, arm.name,
            lambda a, c, s=shift[arm.name]: planted(t_grid(11), vee(PATHS[(a, c)][0] - s,
                                                                    PATHS[(a, c)][1])))))
    table = abl.table_arms(runs, bootstrap=50)
    assert len(table) == 8
    for _, r in table.iterrows():
        s = 0.0 if r["bn_inputs"] == "adv" else 0.05
        assert r["bn_batches"] == (2 if s == 0 else 40)
        depth, at = PATHS[(r["align"], r["curve"])]
        want = min(np.round(vee(depth - s, at)(t) * N) / N for t in t_grid(11))
        assert r["robust_min_all"] == pytest.approx(100 * want)
        assert r["robust_min_all_lo"] <= r["robust_min_all"] <= r["robust_min_all_hi"]
        assert r["clean_min"] == pytest.approx(75.0)  # 30 of 40 clean-correct at least


def test_align_table_times_each_method(tmp_path):
    d = run_folder(tmp_path, "all", lambda a, c: planted(t_grid(5), vee(*PATHS[(a, c)])))
    (d / "alignment.json").write_text(json.dumps({"none-s0-1": {"method": "none"},
                                                  "activation-s0-1": {"seconds": 1.5}}))
    table = abl.table_align([(abl.Arm("all", [], {}), d)], bootstrap=20)
    secs = dict(zip(table["align"], table["align_seconds"]))
    assert secs["activation"] == 1.5 and secs["none"] == 0.0


def test_curve_epochs_table_compares_budgets_within_an_alignment(tmp_path):
    losses = {4: {"none": 1.0, "activation": 0.50}, 8: {"none": 0.9, "activation": 0.49}}
    runs = []
    for e, ls in losses.items():
        d = run_folder(tmp_path, f"e{e}", lambda a, c: planted(t_grid(5), vee(*PATHS[(a, c)])))
        (d / "curves.json").write_text(json.dumps({
            f"{a}-{c}-s0-1": {"train_loss": ls[a], "seconds_per_epoch": float(e)}
            for a, c in PATHS if c == "bezier"}))
        runs.append((abl.Arm(str(e), [], {"curve_epochs": e}), d))
    table = abl.table_curve_epochs(runs, bootstrap=20)
    bez = table[table["curve"] == "bezier"].set_index(["align", "curve_epochs"])
    assert bez.loc[("none", 8), "train_loss_rel_change"] == pytest.approx(-0.1)
    assert bez.loc[("activation", 8), "train_loss_rel_change"] == pytest.approx(-0.02)
    assert np.isnan(bez.loc[("none", 4), "train_loss_rel_change"])
    assert bez.loc[("activation", 8), "seconds_per_epoch"] == 8.0
    # the stopping rule: < 2 % relative change stops extending that alignment only
    assert abl.still_falling(["none", "activation"], losses[4], {"none": 0.9, "activation": 0.495},
                             0.02) == ["none"]
    assert abl.still_falling(["none"], {}, {"none": 0.9}, 0.02) == ["none"]
