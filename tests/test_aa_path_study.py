"""studies/aa_path.py runs end to end on tiny settings: the bench with --strong-at grid,
then the per-path and across-path analysis (issue 27 item 4)."""

from __future__ import annotations

import pandas as pd
import pytest

from robustpath.errors import UserError

TINY = ["--arch", "mlp", "--width", "0.25", "--epochs", "1", "--curve-epochs", "1",
        "--train-subset", "64", "--test-subset", "32", "--t-points", "3", "--no-progress",
        "--steps", "1", "--train-steps", "1", "--strong-pgd-steps", "2",
        "--strong-pgd-restarts", "1", "--aa-version", "custom", "--aa-attacks", "apgd-ce",
        "--device", "cpu", "--refine-rounds", "1"]


@pytest.mark.slow  # four paths, AutoAttack at every t: about 30 s on 2 cores
def test_aa_path_study_on_tiny_settings(tmp_path, capsys):
    from studies import aa_path

    assert aa_path.main(["--out", str(tmp_path), "--strong-examples", "16", "--", *TINY]) == 0
    f = pd.read_csv(tmp_path / "aa_path.csv")
    assert set(f["path_id"]) == {"none-line-s0-1", "none-bezier-s0-1",
                                 "activation-line-s0-1", "activation-bezier-s0-1"}
    strong = pd.read_csv(tmp_path / "run" / "strong_eval.csv")
    # every grid t attacked on every path (t = 0.5 is the only interior one of 3)
    assert (strong[strong.role == "grid1"]["t"] == 0.5).sum() == 4
    for r in f.itertuples():
        at = strong[strong.path_id == r.path_id]
        assert r.aa_min == pytest.approx(at["robust_acc_aa"].min())
        assert r.max_gap == pytest.approx((at["robust_acc_pgd"] - at["robust_acc_aa"]).max())
        assert r.max_gap_lo < r.max_gap_hi
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Across paths" in text and "Kendall" in text
    # analysis only, of the same run, gives the same table
    assert aa_path.main(["--out", str(tmp_path), "--analyse-only"]) == 0
    assert pd.read_csv(tmp_path / "aa_path.csv").equals(f)


def test_aa_path_refuses_a_run_without_the_grid(tmp_path):
    from studies import aa_path

    with pytest.raises(UserError):
        aa_path.analyse(tmp_path)            # no strong stage at all
    assert aa_path.main(["--out", str(tmp_path), "--seeds", "0,1,2"]) == 2
