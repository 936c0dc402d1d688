"""RobustBench zoo: offline loading by name, architecture groups, the compare CLI, the
strong (AutoAttack) evaluation and the transfer check. CPU only, no network.

Full-size zoo architectures (ResNet-18: 11M, WRN-28-10: 36M parameters) are too slow for
this tier, so two tiny RobustBench architectures (``WideResNet`` depth 10 width 1 and
``DMWideResNet`` depth 10 width 1, from ``robustbench.model_zoo.architectures``) are
registered under test names in RobustBench's own registry dict - the dict its
``load_model`` reads - with random-weight checkpoints in RobustBench's layout.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustpath import data
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.errors import UserError
from robustpath.paths.evaluate import evaluate_path
from robustpath.zoo import access
from robustpath.zoo.cli import main as zoo_main

NAME_A, NAME_B, NAME_C = "TinyTest2099_WRN_A", "TinyTest2099_WRN_B", "TinyTest2099_DMWRN_C"
REPO = Path(__file__).resolve().parent.parent


def _wrn():
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    return WideResNet(depth=10, widen_factor=1)


def _dm_wrn():
    from robustbench.model_zoo.architectures.dm_wide_resnet import (
        CIFAR10_MEAN,
        CIFAR10_STD,
        DMWideResNet,
        Swish,
    )

    return DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=Swish,
                        mean=CIFAR10_MEAN, std=CIFAR10_STD)


def write_cifar10(root: Path, per_batch: int = 16, test: int = 24, seed: int = 0) -> Path:
    """A tiny folder in torchvision's CIFAR-10 python format (random images)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        entry = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)], "num_vis": 3072}, f)
    return root


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Test entries in RobustBench's CIFAR-10 L-inf registry + random checkpoints in
    ``<dir>/cifar10/Linf/<name>.pt`` (A: {'state_dict': 'module.'-prefixed}, B, C: plain);
    ROBUSTPATH_OFFLINE=1. Yields ``(model_dir, data_root, state dicts)``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ROBUSTPATH_OFFLINE", "1")
    reg = access.registry("cifar10", "Linf")
    states = {}
    model_dir = tmp_path_factory.mktemp("models")
    ckpt_dir = model_dir / "cifar10" / "Linf"
    ckpt_dir.mkdir(parents=True)
    for i, (name, ctor) in enumerate(((NAME_A, _wrn), (NAME_B, _wrn), (NAME_C, _dm_wrn))):
        mp.setitem(reg, name, {"model": ctor, "gdrive_id": "not-used"})
        torch.manual_seed(i)
        model = ctor()
        with torch.no_grad():  # non-trivial BN statistics, so loading them is checked
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.9, 1.1)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        states[name] = sd
        blob = {"state_dict": {f"module.{k}": v for k, v in sd.items()}} if name == NAME_A else sd
        torch.save(blob, ckpt_dir / f"{name}.pt")
    root = write_cifar10(tmp_path_factory.mktemp("data"))
    yield model_dir, root, states
    mp.undo()


# ---------------------------------------------------------------- data
def test_cifar_loader_reads_a_small_folder(tmp_path):
    root = write_cifar10(tmp_path, per_batch=4, test=6)
    x, y = data.load("cifar10", train=False, root=root, download=False)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    assert torch.equal(x, torch.from_numpy(raw["data"]).float().div(255).view(6, 3, 32, 32))
    assert y.tolist() == raw["labels"]
    x_tr, _ = data.load("cifar10", train=True, root=root, download=False)
    assert len(x_tr) == 20
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        data.load("cifar10", train=False, root=tmp_path / "nothing", download=False)


# ---------------------------------------------------------------- loading and listing
def test_load_by_name_offline(tiny_zoo):
    model_dir, _, states = tiny_zoo
    for name in (NAME_A, NAME_B, NAME_C):
        model = access.load(name, model_dir, "cifar10", "Linf")
        assert not model.training
        got = model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in states[name].items())
    a, c = access.describe(NAME_A), access.describe(NAME_C)
    assert a.arch == "WideResNet" and c.arch == "DMWideResNet"
    assert c.normalisation.startswith("inside the model")  # mean/std buffers
    assert a.normalisation.startswith("none")  # trained on raw [0, 1] pixels


def test_architecture_groups():
    d = {n: access.describe(n) for n in ("Sehwag2021Proxy_R18", "Addepalli2022Efficient_RN18",
                                      "Rebuffi2021Fixing_R18_ddpm", "Rade2021Helper_R18_ddpm",
                                      "Standard", "Gowal2021Improving_28_10_ddpm_100m")}
    assert d["Sehwag2021Proxy_R18"].group == d["Addepalli2022Efficient_RN18"].group
    assert d["Rebuffi2021Fixing_R18_ddpm"].group == d["Rade2021Helper_R18_ddpm"].group
    assert d["Sehwag2021Proxy_R18"].group != d["Rebuffi2021Fixing_R18_ddpm"].group
    # same depth and width, different classes (WideResNet vs DMWideResNet): no path
    assert d["Standard"].group != d["Gowal2021Improving_28_10_ddpm_100m"].group
    with pytest.raises(UserError, match="different architectures"):
        access.check_pair(d["Sehwag2021Proxy_R18"], d["Rebuffi2021Fixing_R18_ddpm"])
    with pytest.raises(UserError, match="not in RobustBench"):
        access.describe("Sehwag2021Proxy_R19")


def test_list_marks_present_checkpoints(tiny_zoo, capsys):
    model_dir, _, _ = tiny_zoo
    assert zoo_main(["list", "--model-dir", str(model_dir), "--present"]) == 0
    out = capsys.readouterr().out
    assert f"* {NAME_A}" in out and f"* {NAME_C}" in out
    assert out.index("WideResNet (") < out.index(NAME_A) < out.index("DMWideResNet (")


def test_mismatched_pair_is_refused(tiny_zoo, tmp_path, capsys):
    model_dir, root, _ = tiny_zoo
    rc = zoo_main(["compare", "--models", f"{NAME_A},{NAME_C}", "--model-dir", str(model_dir),
                   "--data-root", str(root), "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "different architectures" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_data_fails_before_writing(tiny_zoo, tmp_path, capsys):
    model_dir, _, _ = tiny_zoo
    (tmp_path / "no-data").mkdir()  # exists without CIFAR (a missing folder is a usage error)
    rc = zoo_main(["compare", "--models", f"{NAME_A},{NAME_B}", "--model-dir", str(model_dir),
                   "--data-root", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"),
                   "--device", "cpu"])
    assert rc == 2 and "cifar-10-batches-py" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_offline_cli(tmp_path):
    env = dict(os.environ, ROBUSTPATH_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "robustpath.zoo", "compare", "--models",
         "Sehwag2021Proxy_R18,Addepalli2022Efficient_RN18", "--model-dir", str(tmp_path / "m"),
         "--data-root", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    expected = tmp_path / "m" / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt"
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(expected) in lines[0] and "Traceback" not in proc.stderr
    assert not expected.exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- compare end to end
def test_compare_cli_writes_everything_and_rerun_does_nothing(tiny_zoo, tmp_path):
    model_dir, root, _ = tiny_zoo
    out = tmp_path / "run"
    argv = ["compare", "--models", f"{NAME_A},{NAME_B},{NAME_C}", "--model-dir", str(model_dir),
            "--data-root", str(root), "--align", "none,weight,activation", "--t-points", "3",
            "--test-subset", "16", "--train-subset", "0", "--batch-size", "16",
            "--bn-batches", "2", "--bn-inputs", "clean", "--steps", "2", "--eps", "8/255",
            "--strong-examples", "8", "--aa-version", "custom", "--aa-attacks", "apgd-ce",
            "--strong-pgd-steps", "2", "--strong-pgd-restarts", "1", "--strong-t", "0.25",
            "--bootstrap", "50", "--curvature", "2", "--curvature-iters", "2",
            "--device", "cpu", "--out", str(out), "--no-progress"]
    assert zoo_main(argv) == 0
    for f in ("records.csv", "examples.npz", "tables/summary.md", "plots/paths.png",
              "barrier_matrix.csv", "plots/barrier_matrix_line.png", "strong_eval.csv",
              "strong_eval.md", "strong_examples.npz", "transfer.csv", "transfer.md",
              "models.json", "alignment.json", "equivalence.json", "curvature.csv",
              "curvature.md"):
        assert (out / f).is_file(), f
    # the curvature stage too, by model name (the plane stage, which needs a fitted
    # curve: tests/test_identity.py, slow tier)
    assert set(pd.read_csv(out / "curvature.csv")["endpoint_a"]) == {NAME_A}
    records = pd.read_csv(out / "records.csv")
    assert set(records["align"]) == {"none", "weight", "activation"}
    # endpoints named by model, not by index into models.json; C: other architecture
    assert set(zip(records["endpoint_a"], records["endpoint_b"])) == {(NAME_A, NAME_B)}
    assert set(records["path_id"]) == {f"{a}-{k}-{NAME_A}__{NAME_B}" for a in
                                       ("none", "weight", "activation") for k in records["curve"]}
    from robustpath.io.records import read as read_records

    assert {r.endpoints for r in read_records(out)} == {(NAME_A, NAME_B)}
    matrix = pd.read_csv(out / "barrier_matrix.csv")
    assert len(matrix) == 3 and set(matrix["model_b"]) == {NAME_B}
    assert {"robust_loss_barrier", "robust_acc_min"} <= set(matrix.columns)
    strong = pd.read_csv(out / "strong_eval.csv")
    assert set(zip(strong["endpoint_a"], strong["endpoint_b"])) == {(NAME_A, NAME_B)}
    assert {"robust_acc_pgd", "robust_acc_aa", "robust_acc_pgd_many", "gap_pgd_aa"} <= \
        set(strong.columns)
    assert set(strong["t"].round(3)) >= {0.0, 0.25, 1.0}
    assert set(strong["role"]) == {"a", "b", "worst", "extra"}
    assert (strong["robust_acc_aa"] <= strong["clean_acc"]).all()
    # the strong stage prepares each network exactly as the path evaluation did
    assert strong["clean_matches_path"].all()
    assert len(list((out / "cards").glob("*.json"))) == len(strong)
    transfer = pd.read_csv(out / "transfer.csv")
    assert {"direct_acc", "transfer_acc_a", "transfer_acc_b", "p_a", "stronger"} <= \
        set(transfer.columns)
    # t = 0 and t = 1 are the published models: their logits, and their own BN statistics
    import json

    eq = json.loads((out / "equivalence.json").read_text())
    assert len(eq) == 3 * len(set(records["curve"]))
    for rec in eq.values():
        for check in ("aligned_b_vs_b", "t0_vs_a", "t1_vs_b"):
            assert rec[check]["max_abs_logit_diff"] <= 1e-4 * max(1, rec[check]["max_abs_logit"])
    x_te, y_te = data.load("cifar10", train=False, root=root, subset=16, seed=4321)
    for name, t in ((NAME_A, 0.0), (NAME_B, 1.0)):
        with torch.no_grad():
            own = (access.load(name, model_dir)(x_te).argmax(1) == y_te).float().mean().item()
        got = records[(records["align"] == "none") & (records["t"] == t)]["clean_acc"]
        assert got.iloc[0] == pytest.approx(own)
    assert "refine" in set(records["point"])

    def cache_files():  # lock files are touched by every reader; the entries must not be
        return {p: p.stat().st_mtime_ns for p in (out / "ckpt").rglob("*")
                if p.is_file() and not p.name.endswith(".lock")}

    ckpt = cache_files()
    start = time.perf_counter()  # a rerun loads the models (the engine's nodes) but computes nothing
    assert zoo_main(argv) == 0
    assert time.perf_counter() - start < 30
    assert cache_files() == ckpt
    assert pd.read_csv(out / "records.csv").equals(records)


def test_aligned_line_runs_on_loaded_models(tiny_zoo):
    """Programmatic use: load, align by weights, evaluate a short line path."""
    from robustpath.align import align
    from robustpath.paths.curves import build_curve

    model_dir, root, _ = tiny_zoo
    a, b = (access.load(n, model_dir) for n in (NAME_A, NAME_B))
    x, y = data.load("cifar10", train=False, root=root, download=False)
    aligned, _, _ = align(a, b, method="weight", example_input=x[:2])
    with torch.no_grad():
        assert torch.allclose(aligned(x), b(x), atol=1e-4)
    c = build_curve("line", a, aligned)
    x_tr, y_tr = data.load("cifar10", train=True, root=root, download=False)
    res = evaluate_path(c.model_at, [0.0, 0.5, 1.0], x, y,
                        build_attack(AttackConfig(eps=8 / 255, steps=2, seed=0)),
                        bn_loader=data.Batches(x_tr, y_tr, 16), bn_batches=2, progress=False)
    assert res.robust_correct.shape == (3, len(y))


# ---------------------------------------------------------------- equivalence in the zoo
def test_wrong_alignment_is_caught_by_the_equivalence_check(tiny_zoo, tmp_path, monkeypatch,
                                                            capsys):
    import robustpath.align as align_mod

    model_dir, root, _ = tiny_zoo
    real = align_mod.align

    def broken(a, b, **kw):  # a permutation applied to one layer only: not B's function
        aligned, perm, report = real(a, b, **kw)
        with torch.no_grad():
            w = next(p for n, p in aligned.named_parameters() if p.dim() == 4)
            w.copy_(w[torch.randperm(w.shape[0])])
        return aligned, perm, report

    monkeypatch.setattr(align_mod, "align", broken)
    argv = ["compare", "--models", f"{NAME_A},{NAME_B}", "--model-dir", str(model_dir),
            "--data-root", str(root), "--align", "weight", "--t-points", "3",
            "--test-subset", "16", "--train-subset", "0", "--batch-size", "16",
            "--bn-batches", "2", "--steps", "2", "--no-strong", "--no-transfer",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]
    assert zoo_main(argv) == 2
    err = capsys.readouterr().err
    assert "do not compute the same function" in err and "Traceback" not in err


# ---------------------------------------------------------------- one stage graph
def test_zoo_and_bench_paths_over_the_same_two_models_give_identical_records(tmp_path):
    """The zoo is an endpoint source of the bench's stages: two endpoints trained by the
    bench, saved as RobustBench checkpoints and compared by the zoo with the same
    settings, give the bench's records number for number (alignment, curve, BN
    recomputation, attack and refinement are the same code)."""
    from robustpath import bench, models
    from robustpath.io.store import load_model

    root = write_cifar10(tmp_path / "data", per_batch=16, test=24)
    common = ["--align", "none,weight", "--paths", "line", "--t-points", "3",
              "--test-subset", "0", "--train-subset", "0",  # batch size: both default 128
              "--bn-batches", "2", "--bn-inputs", "clean", "--steps", "2", "--train-steps", "2",
              "--eps", "8/255", "--refine-rounds", "1", "--no-strong", "--bootstrap", "20",
              "--device", "cpu", "--no-progress", "--data-root", str(root)]
    run = tmp_path / "bench"
    assert bench.main(["--dataset", "cifar10", "--arch", "cnn-small", "--seeds", "0,1",
                       "--epochs", "1", "--plane-grid", "0", "--out", str(run), *common]) == 0
    mp = pytest.MonkeyPatch()
    mp.setenv("ROBUSTPATH_OFFLINE", "1")
    reg = access.registry("cifar10", "Linf")
    model_dir = tmp_path / "models"
    (model_dir / "cifar10" / "Linf").mkdir(parents=True)
    names = []
    try:
        for seed in (0, 1):
            [ckpt] = (run / "ckpt" / "endpoints").glob(f"cnn-small-seed{seed}-*.safetensors")
            model, _ = load_model(ckpt.with_suffix(""))
            name = f"BenchSeed{seed}_2099"
            mp.setitem(reg, name, {"model": lambda: models.create("cnn-small", "cifar10"),
                                   "gdrive_id": "not-used"})
            torch.save(model.state_dict(), model_dir / "cifar10" / "Linf" / f"{name}.pt")
            names.append(name)
        assert zoo_main(["compare", "--models", ",".join(names), "--model-dir", str(model_dir),
                         "--bn-endpoints", "--no-transfer", "--out", str(tmp_path / "zoo"),
                         "--t-batch", "2", *common]) == 0
    finally:
        mp.undo()
    cols = ["align", "curve", "t", "clean_acc", "robust_acc", "clean_loss", "robust_loss"]
    b = pd.read_csv(run / "records.csv")[cols].sort_values(["align", "curve", "t"])
    z = pd.read_csv(tmp_path / "zoo" / "records.csv")[cols].sort_values(["align", "curve", "t"])
    assert len(b) == len(z) == 2 * 4  # 3 grid points + 1 refinement point per path
    pd.testing.assert_frame_equal(b.reset_index(drop=True), z.reset_index(drop=True))
    # what the zoo got from the shared stages: the point cache (one entry per network
    # evaluated) and t_batch (2 above: the same records as the bench's one t at a time)
    points = [f for f in (tmp_path / "zoo" / "ckpt" / "points").rglob("*.npz")]
    assert len(points) >= 2, points


def test_rerun_check_ignores_runtime_settings_but_not_science():
    """A zoo folder is refused for another configuration; how it runs (every Runtime
    field, where checkpoints and data live) is not a different configuration."""
    from robustpath.zoo.config import CompareConfig
    from robustpath.zoo.run import _comparable

    base = CompareConfig(models=["A", "B"]).to_dict()
    how = dict(base, device="cuda", t_batch=4, amp=False, fuse=False, threads=3,
               progress=False, model_dir="/elsewhere", data_root="/data", out="x",
               trust_checkpoints=True)
    assert _comparable(how) == _comparable(base)
    for change in ({"eps": 0.5}, {"curve_epochs": 9}, {"align": ["weight"]},
                   {"bn_endpoints": True}):
        assert _comparable(dict(base, **change)) != _comparable(base), change
