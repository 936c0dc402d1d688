"""The strong stage's numbers (issue 27): the AutoAttack version in a point's key and
check, every grid t attacked with --strong-at grid, exact intervals and McNemar counts in
strong_eval, no zero-width interval on 16 examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from robustpath.attacks.autoattack import StandardAutoAttack
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.errors import UserError
from robustpath.paths.curves import build_curve
from robustpath.paths.evaluate import evaluate_path
from robustpath.strong import files as strong_io
from robustpath.strong.stage import PointSetup, StrongSettings, strong_path, strong_ts

N = 16


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def line(fmnist):
    """A line between two small untrained networks, evaluated at t = 0, 0.5, 1 on N examples."""
    x, y = fmnist[2][:N], fmnist[3][:N]
    c = build_curve("line", _net(0), _net(1))
    atk = AttackConfig(eps=0.1, steps=3, seed=0)
    res = evaluate_path(c.model_at, [0.0, 0.25, 0.5, 0.75, 1.0], x, y, build_attack(atk),
                        progress=False)
    return c, res, x, y, atk


def _run(line, folder, at="ends-worst"):
    c, res, x, y, atk = line
    s = StrongSettings(examples=N, aa_version="custom", aa_attacks=["apgd-ce"], pgd_steps=3,
                       pgd_restarts=1, at=at)
    return strong_path(c.model_at, res, x, y, settings=s, eval_attack=atk, setup=PointSetup(),
                       folder=folder, num_classes=10, progress=False, path_key="line")


def test_a_cached_point_of_another_autoattack_version_is_recomputed(line, tmp_path, capsys):
    folder = tmp_path / "strong"
    first = _run(line, folder)
    engine = first.point("a").meta["aa"]["engine"]
    assert engine.startswith("pyautoattack ")
    metas = sorted(folder.glob("*.meta.json"))
    assert len(metas) == len({p.t for p in first.points})   # one entry per point
    # the recorded version of one cached point changed: that point is recomputed, said once
    meta = json.loads(metas[0].read_text())
    meta["aa"]["engine"] = "pyautoattack 0.0.1"
    metas[0].write_text(json.dumps(meta))
    capsys.readouterr()
    again = _run(line, folder)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pyautoattack 0.0.1" in err[0] and engine in err[0] \
        and "recomputed" in err[0]
    assert json.loads(metas[0].read_text())["aa"]["engine"] == engine   # rewritten
    for p, q in zip(first.points, again.points):
        assert all(np.array_equal(p.arrays[k], q.arrays[k]) for k in p.arrays)
    # and the installed version is part of the key: another version finds no entry at all
    real = StandardAutoAttack.describe

    def other(self):
        return {**real(self), "engine": "pyautoattack 9.9.9"}

    StandardAutoAttack.describe = other
    try:
        _run(line, folder)
    finally:
        StandardAutoAttack.describe = real
    assert len(list(folder.glob("*.meta.json"))) == 2 * len(metas)


def test_strong_at_grid_attacks_every_grid_t_and_the_barrier_is_a_max(line, tmp_path):
    c, res, x, y, atk = line
    assert [r for r, _ in strong_ts(res, at="grid")][3:] == ["grid1", "grid2", "grid3"]
    with pytest.raises(UserError, match="--strong-at"):
        StrongSettings(at="everywhere").validate()
    sp = _run(line, tmp_path / "strong", at="grid")
    assert sorted(p.t for p in sp.points if p.role.startswith("grid")) == [0.25, 0.5, 0.75]
    ident = {"align": "none", "curve": "line"}
    f = strong_io.write(tmp_path, {"p": (ident, sp)}, cfg={"eps": 0.1})
    d = strong_io.read(tmp_path)["p"]
    m = strong_io.strong_metrics(d, bootstrap=200)
    assert m["aa_acc_barrier_max"]["value"] >= m["aa_acc_barrier"]["value"] - 1e-12
    assert m["aa_robust_min"]["value"] <= m["aa_robust_worst"]["value"]
    per_t = {float(r.t): r.robust_acc_aa for r in f.itertuples()}
    assert m["aa_robust_min"]["value"] == pytest.approx(min(per_t.values()))
    assert m["aa_t_min"]["value"] in per_t
    # 16 examples: no bootstrap interval for the barriers, exact ones for the rest
    assert np.isnan(m["aa_acc_barrier"]["lo"]) and np.isnan(m["aa_acc_barrier_max"]["lo"])
    for k in ("aa_robust_worst", "aa_pgd_gap", "aa_robust_min", "aa_pgd_gap_max"):
        assert m[k]["hi"] > m[k]["lo"] and m[k]["lo"] <= m[k]["value"] <= m[k]["hi"]


def test_strong_eval_has_exact_intervals_and_mcnemar_counts(line, tmp_path):
    sp = _run(line, tmp_path / "strong")
    f = strong_io.write(tmp_path, {"p": ({"align": "none", "curve": "line"}, sp)},
                        cfg={"eps": 0.1})
    for col in strong_io.ACC_COLUMNS + ("gap_pgd_aa",):
        assert (f[f"{col}_hi"] > f[f"{col}_lo"]).all()          # never zero-width on 16
        assert ((f[f"{col}_lo"] <= f[col] + 1e-12) & (f[col] <= f[f"{col}_hi"] + 1e-12)).all()
    for p, r in zip(sp.points, f.itertuples()):
        for s_ in ("a", "b"):
            direct, tr = p.arrays["pgd"], p.arrays[f"transfer_{s_}"]
            assert getattr(r, f"transfer_b_{s_}") == int((direct & ~tr).sum())
            assert getattr(r, f"transfer_c_{s_}") == int((~direct & tr).sum())
        assert r.gap_b - r.gap_c == round(N * r.gap_pgd_aa)
    md = (tmp_path / "strong_eval.md").read_text()
    assert "Clopper-Pearson" in md and "discordant" in md
    csv = (tmp_path / "strong_eval.csv").read_text().splitlines()[0]
    assert "transfer_b_a" in csv and "robust_acc_aa_lo" in csv


def test_report_refresh_adds_the_exact_columns_to_an_old_strong_table(line, tmp_path):
    sp = _run(line, tmp_path / "strong")
    f = strong_io.write(tmp_path, {"p": ({"align": "none", "curve": "line"}, sp)},
                        cfg={"eps": 0.1})
    new_cols = [c for c in f.columns if c.endswith(("_lo", "_hi")) or c.startswith(
        ("gap_b", "gap_c", "transfer_b_", "transfer_c_"))]
    # a table written before those columns existed
    old = f.drop(columns=new_cols)
    (tmp_path / "strong_eval.csv").write_text(old.to_csv(index=False, float_format="%.6f"))
    before = (tmp_path / "strong_eval.csv").read_bytes()
    got = strong_io.refresh(tmp_path, {"eps": 0.1})
    assert (tmp_path / "strong_eval.csv").read_bytes() == before     # primary file untouched
    for c in new_cols:
        assert np.allclose(got[c].to_numpy(float), f[c].to_numpy(float), atol=1e-6), c
    assert "Clopper-Pearson" in (tmp_path / "tables" / "strong_eval.md").read_text()
    assert strong_io.refresh(tmp_path / "nothing", {}) is None


@pytest.mark.parametrize("flags,msg", [
    (["--strong-at", "everywhere"], "unknown --strong-at 'everywhere'"),
    (["--no-strong", "--strong-at", "grid"], "--strong-at needs the strong stage"),
])
def test_bench_strong_at_refusals_are_one_line(flags, msg, tmp_path, capsys):
    from robustpath import bench

    out = tmp_path / "run"
    assert bench.main(["--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not out.exists()
