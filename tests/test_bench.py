"""The benchmark end to end on a tiny configuration: caching, resume, report,
barrier invariants, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from robustpath import bench
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.attacks.metrics import per_example
from robustpath.data import Batches
from robustpath.engine import stages
from robustpath.io import outputs
from robustpath.paths import fit as curve_train
from robustpath.paths.bn import recompute_bn
from robustpath.paths.curves import build_curve
from robustpath.paths.evaluate import evaluate_path, t_grid
from robustpath.report.cli import main as report_main
from robustpath.report.tables import COLUMNS
from robustpath.stats.barrier import path_metrics
from robustpath.train import loop as train

TINY = ["--train-subset", "600", "--test-subset", "120", "--epochs", "1", "--curve-epochs", "2",
        "--t-points", "3", "--bn-batches", "2", "--bootstrap", "50", "--seeds", "0,1",
        "--align", "none,weight", "--paths", "line,bezier", "--steps", "3", "--train-steps", "2",
        # a small but real strong stage (AutoAttack's APGD-CE, PGD-3 x 2) and refinement
        "--strong-examples", "16", "--aa-version", "custom", "--aa-attacks", "apgd-ce",
        "--strong-pgd-steps", "3", "--strong-pgd-restarts", "2", "--refine-rounds", "1",
        "--plane-grid", "3", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    assert bench.main(TINY + ["--out", str(out)]) == 0
    return out


def test_run_writes_documented_outputs(tiny_run):
    for name in ("config.json", "provenance.json", "command.txt", "records.csv", "examples.npz",
                 "tables/summary.csv", "tables/summary.md", "tables/summary.tex",
                 "tables/per_path.csv", "plots/paths.png", "plots/paths.pdf"):
        assert (tiny_run / name).is_file(), name
    rec = pd.read_csv(tiny_run / "records.csv")
    grid = rec[rec["point"] == "grid"]
    assert len(grid) == 4 * 3  # 2 alignments x 2 paths x 3 t
    # one refinement round: up to 2 extra t per path, strictly inside (0, 1), marked
    refine = rec[rec["point"] == "refine"]
    assert 0 < len(refine) <= 4 * 2 and ((refine["t"] > 0) & (refine["t"] < 1)).all()
    assert (rec["robust_acc"] <= rec["clean_acc"] + 1e-9).all()
    # the strong stage: endpoints and worst t of every path, AA <= clean, cards
    strong = pd.read_csv(tiny_run / "strong_eval.csv")
    assert len(strong) == 4 * 3 and set(strong["role"]) == {"a", "b", "worst"}
    assert strong["clean_matches_path"].all()
    assert (strong["robust_acc_aa"] <= strong["clean_acc"] + 1e-9).all()
    assert (strong["robust_acc_worst"] <= strong[["robust_acc_aa", "robust_acc_pgd",
                                                 "robust_acc_pgd_many"]].min(axis=1) + 1e-9).all()
    for _, r in strong[strong["role"] == "worst"].iterrows():  # worst t = the path's min
        path = rec[rec["path_id"] == r["path_id"]]
        assert r["t"] == pytest.approx(path.loc[path["robust_acc"].idxmin(), "t"], abs=1e-6) \
            or path["robust_acc"].min() == pytest.approx(
                path.loc[np.isclose(path["t"], r["t"]), "robust_acc"].iloc[0])
    cards = sorted((tiny_run / "cards").glob("*.json"))
    assert len(cards) == len(strong)
    card = json.loads(cards[0].read_text())
    assert card["threat_model"] == "Linf" and card["n_examples"] == 16
    assert card["attacks"]["autoattack"]["engine"].startswith("pyautoattack")
    align = json.loads((tiny_run / "alignment.json").read_text())
    for rep in align.values():
        assert rep["equivalence"]["max_abs_logit_diff"] <= 1e-4 * max(
            1, rep["equivalence"]["max_abs_logit"])
    summary = pd.read_csv(tiny_run / "tables" / "summary.csv")
    from robustpath.strong.files import STRONG_PATH_METRICS

    # the AA metrics over every t need --strong-at grid; the default attacks PGD's worst t
    cols = [c for c in COLUMNS if c[0] not in STRONG_PATH_METRICS]
    assert not set(STRONG_PATH_METRICS) & set(summary.columns)
    for metric, _, _ in cols:
        assert metric in summary.columns
    md = (tiny_run / "tables" / "summary.md").read_text()
    for _, header, _ in cols:
        assert header in md
    assert "unaligned" in md and "aligned (weight)" in md
    assert "python -m robustpath.bench" in (tiny_run / "command.txt").read_text()


def test_endpoints_identical_across_paths(tiny_run):
    rec = pd.read_csv(tiny_run / "records.csv")
    # model A sits at t=0 of every path; BN batches and attack seeds are shared
    at0 = rec[np.isclose(rec["t"], 0.0)]
    assert len(at0) == 4
    assert at0["clean_acc"].nunique() == 1 and at0["robust_acc"].nunique() == 1


def test_second_run_reuses_every_stage(tiny_run, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a cached stage was recomputed")

    import robustpath.align as align_mod
    import robustpath.paths.plane as plane_mod
    import robustpath.strong.stage as strong_mod

    monkeypatch.setattr(stages, "train_endpoint", boom)
    monkeypatch.setattr(stages, "evaluate_path", boom)
    monkeypatch.setattr(align_mod, "align", boom)          # alignment stage
    monkeypatch.setattr(plane_mod, "plane_grid", boom)     # plane stage
    monkeypatch.setattr(strong_mod, "per_example", boom)       # strong stage (PGD-many)
    real = curve_train.train_curve

    def no_epochs(*a, **k):
        return real(*a, **{**k, "on_epoch_end": boom})

    monkeypatch.setattr(curve_train, "train_curve", no_epochs)
    before = (tiny_run / "tables" / "summary.md").read_bytes()
    assert bench.main(TINY + ["--out", str(tiny_run)]) == 0
    assert (tiny_run / "tables" / "summary.md").read_bytes() == before


def test_report_rebuilds_byte_identical_tables(tiny_run):
    names = ["summary.csv", "summary.md", "summary.tex", "per_path.csv"]
    before = {n: (tiny_run / "tables" / n).read_bytes() for n in names}
    for n in names:
        (tiny_run / "tables" / n).unlink()
    assert report_main([str(tiny_run)]) == 0
    for n in names:
        assert (tiny_run / "tables" / n).read_bytes() == before[n], n


def test_report_refuses_corrupt_records_and_keeps_tables(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("config.json", "examples.npz"):
        (bad / f).write_bytes((tiny_run / f).read_bytes())
    text = (tiny_run / "records.csv").read_text()
    (bad / "records.csv").write_text(text[: len(text) // 2])  # truncated mid-row
    (bad / "tables").mkdir()
    (bad / "tables" / "summary.md").write_text("earlier result\n")
    assert report_main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert (bad / "tables" / "summary.md").read_text() == "earlier result\n"
    # a truncated per-example file too
    (bad / "records.csv").write_text(text)
    blob = (tiny_run / "examples.npz").read_bytes()
    (bad / "examples.npz").write_bytes(blob[: len(blob) // 3])
    assert report_main([str(bad)]) == 2


@pytest.mark.slow  # 15 s; the fast tier stays under 6 min on 2 cores
def test_interrupted_curve_training_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = TINY + ["--align", "none", "--paths", "bezier", "--out", str(out)]
    real = curve_train.train_curve
    seen = []

    def interrupted(*a, **k):
        def hook(epoch, record):
            seen.append(epoch)
            raise KeyboardInterrupt

        return real(*a, **{**k, "on_epoch_end": hook})

    monkeypatch.setattr(curve_train, "train_curve", interrupted)
    assert bench.main(args) == 130  # killed after the first curve epoch
    assert seen == [1] and not (out / "records.csv").exists()

    def watched(*a, **k):
        return real(*a, **{**k, "on_epoch_end": lambda e, r: seen.append(e)})

    monkeypatch.setattr(curve_train, "train_curve", watched)
    assert bench.main(args) == 0
    assert seen == [1, 2]  # the rerun trained only epoch 2
    assert (out / "records.csv").is_file()


def test_barrier_of_model_to_itself_is_zero(trained_pair, fmnist):
    model_a = trained_pair[0]
    x_tr, y_tr, x_te, y_te = fmnist
    c = build_curve("line", model_a, model_a)
    attack = build_attack(AttackConfig(eps=0.1, steps=3, seed=0))
    res = evaluate_path(c.model_at, t_grid(5), x_te[:200], y_te[:200], attack,
                        bn_loader=Batches(x_tr, y_tr, 128, shuffle=True, seed=0), bn_batches=3,
                        progress=False)
    m = path_metrics(res, bootstrap=50)
    for name in ("clean_loss_barrier", "robust_loss_barrier", "clean_acc_barrier",
                 "robust_acc_barrier"):
        assert abs(m[name]["value"]) < 1e-6, name


def test_line_metrics_match_direct_interpolation(trained_pair, fmnist):
    a, b = trained_pair[0], trained_pair[1]
    x_tr, y_tr, x_te, y_te = fmnist
    x_te, y_te = x_te[:200], y_te[:200]
    c = build_curve("line", a, b)
    attack = build_attack(AttackConfig(eps=0.1, steps=3, seed=0))
    loader = list(Batches(x_tr, y_tr, 128, shuffle=True, seed=0))[:3]
    res = evaluate_path(c.model_at, [0.0, 0.5, 1.0], x_te, y_te, attack, bn_loader=loader,
                        bn_batches=3, progress=False)
    # direct: average the state dicts by hand
    sa, sb = a.state_dict(), b.state_dict()
    direct = train.models.create("cnn-small", "fashion-mnist")
    direct.load_state_dict({k: (0.5 * sa[k] + 0.5 * sb[k]) if sa[k].is_floating_point() else sa[k]
                            for k in sa})
    recompute_bn(direct, loader, batches=3)
    clean = per_example(direct, x_te, y_te)
    robust = per_example(direct, x_te, y_te, attack)
    assert (res.clean_correct[1] == clean.correct.numpy()).mean() >= 0.99
    assert abs(res.robust_correct[1].mean() - robust.accuracy) <= 0.01
    assert np.allclose(res.clean_loss[1], clean.loss.numpy(), atol=1e-4)
    m = path_metrics(res, bootstrap=50)
    lin = 0.5 * (res.clean_loss[0].mean() + res.clean_loss[2].mean())
    assert m["clean_loss_barrier"]["value"] == pytest.approx(
        max(0.0, res.clean_loss[1].mean() - lin), abs=1e-6)


@pytest.mark.parametrize("args", [
    ["--dataset", "imagenet"], ["--arch", "resnet9000"], ["--attack", "banana"],
    ["--eps", "banana"], ["--eps", "-1"], ["--paths", "spiral"], ["--align", "magic"],
    ["--seeds", "0"], ["--bogus-flag"], ["--t-points", "1"], ["--device", "tpu"],
    ["--attack", "fgsm", "--threat-model", "L2"], ["--width", "-1"], ["--preset", "foo"],
])
def test_bad_input_one_line_exit_2(args, tmp_path, capsys):
    """In process (the entry point's exit code and stderr through a subprocess:
    test_missing_data_root_for_cifar); an exception other than the one-line error would
    fail the call."""
    out = tmp_path / "run"
    assert bench.main([*args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert "Traceback" not in captured.err and not captured.out
    assert not out.exists()


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert bench.main(["--out", str(blocker / "run"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1


def test_missing_data_root_for_cifar(tmp_path):
    (tmp_path / "nowhere").mkdir()  # exists, holds no CIFAR (a missing folder: test_faults)
    r = subprocess.run([sys.executable, "-m", "robustpath.bench", "--dataset", "cifar10",
                        "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "ROBUSTPATH_OFFLINE": "1"})
    assert r.returncode == 2 and "cifar10" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's --help: print, exit 0
        bench.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--attack", "--eps", "--dataset", "--data-root", "--arch", "--preset", "--seeds",
                 "--align", "--paths", "--device", "--out"):
        assert flag in out


def test_committed_default_run_matches_the_default_configuration():
    """The committed run folder is regenerated with `--out results/...`: its config must
    be today's default, or the committed numbers would no longer come from the committed
    code's settings. Without --out a run goes to the git-ignored runs/ (a fresh clone's
    `make bench` leaves `git status` clean)."""
    import json
    from pathlib import Path

    committed = Path(__file__).resolve().parent.parent / "results" / "fashion-mnist-cnn-small-quick"
    old = json.loads((committed / "config.json").read_text())
    cfg = bench.config_from_args(bench.parser().parse_args([]))
    assert outputs.comparable(old) == outputs.comparable(cfg.to_dict())
    assert cfg.out == "runs/fashion-mnist-cnn-small-quick"
    for argv, out in ((["--preset", "paper-fmnist"], "runs/fashion-mnist-tinyten-paper-fmnist"),
                      (["--dataset", "mnist", "--arch", "mlp"], "runs/mnist-mlp-quick")):
        assert bench.config_from_args(bench.parser().parse_args(argv)).out == out


@pytest.mark.slow  # a whole bench run without fuse (~40 s); fuse on/off is unit-tested in test_fuse
def test_no_fuse_runs_every_network_as_it_is(tmp_path, monkeypatch):
    """--no-fuse: no robustpath.models.fuse view is built anywhere in the run, the switch is
    restored afterwards, and the run's stage cache is shared with fused runs (the
    flag changes float rounding, not what is computed, like --no-amp)."""
    from robustpath.models import fuse

    def refuse(model):
        raise AssertionError("fuse.rewrite called under --no-fuse")

    monkeypatch.setattr(fuse, "rewrite", refuse)
    monkeypatch.setattr(fuse, "_CACHE", type(fuse._CACHE)())
    small = [a for a in TINY if a != "none,weight"]
    small[small.index("--align") + 1:small.index("--align") + 1] = ["none"]
    assert bench.main(small + ["--no-fuse", "--out", str(tmp_path / "run")]) == 0
    from robustpath import runtime

    assert runtime.current().fuse is True  # the run's runtime ended with the run
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["fuse"] is False
    assert outputs.comparable(cfg) == outputs.comparable({**cfg, "fuse": True})
