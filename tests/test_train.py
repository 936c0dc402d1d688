"""Adversarial training of endpoints: it learns, it is seeded, checkpoints round-trip,
and the CLI turns bad input into one ``error:`` line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustpath.attacks.base import AttackConfig
from robustpath.errors import UserError
from robustpath.io import store
from robustpath.train.loop import TrainConfig, train_endpoint, train_model

REPO = Path(__file__).resolve().parent.parent


def test_pgd_training_beats_chance(trained_pair):
    """cnn-small, 3 PGD epochs on 3000 Fashion-MNIST images (the session fixture)."""
    for metrics in trained_pair[2:]:
        assert metrics["clean_acc"] > 0.65, metrics
        assert metrics["robust_acc"] > 0.35, metrics  # PGD eps 0.1, 5 steps; chance is 0.1
        assert metrics["robust_acc"] < metrics["clean_acc"]
        assert metrics["robust_loss"] > metrics["clean_loss"]
        hist = metrics["history"]
        assert len(hist) == 3
        assert hist[-1]["train_loss"] < hist[0]["train_loss"]
        assert metrics["seconds_per_epoch"] > 0


def test_trained_models_come_back_in_eval_mode_and_trainable(trained_pair):
    for model in trained_pair[:2]:
        assert not model.training
        assert all(p.requires_grad for p in model.parameters())
        # trained in channels-last on CPU, handed back in the default layout
        assert all(p.is_contiguous() for p in model.parameters())


def _tiny_cfg(seed: int = 0, **kw) -> TrainConfig:
    base = {"seed": seed, "epochs": 1, "batch_size": 64, "train_subset": 256, "test_subset": 64,
                "attack": AttackConfig(eps=0.1, steps=2), "eval_attack": AttackConfig(eps=0.1, steps=2, seed=0)}
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_data(fmnist):
    x_tr, y_tr, x_te, y_te = fmnist
    return x_tr[:256], y_tr[:256], x_te[:64], y_te[:64]


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeded_training_is_repeatable(tiny_data):
    m1, r1 = train_model(_tiny_cfg(0), progress=False, data=tiny_data)
    m2, r2 = train_model(_tiny_cfg(0), progress=False, data=tiny_data)
    assert _same_weights(m1, m2)
    assert r1["history"] == r2["history"] and r1["robust_acc"] == r2["robust_acc"]
    m3, _ = train_model(_tiny_cfg(1), progress=False, data=tiny_data)
    assert not _same_weights(m1, m3)


@pytest.mark.parametrize("method", ["fgsm", "clean"])
def test_other_methods_train(tiny_data, method):
    _model, metrics = train_model(_tiny_cfg(0, method=method), progress=False, data=tiny_data)
    assert 0.0 <= metrics["clean_acc"] <= 1.0 and 0.0 <= metrics["robust_acc"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["clean_loss"]))


def test_train_endpoint_writes_a_complete_checkpoint(tmp_path, tiny_data):
    cfg = _tiny_cfg(0)
    path = tmp_path / "ep" / "seed0"
    model, metrics = train_endpoint(cfg, path, progress=False, data=tiny_data)
    assert path.with_suffix(".safetensors").is_file() and path.with_suffix(".json").is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(meta["config"]).cache_key() == cfg.cache_key()
    assert meta["model"] == {"arch": "cnn-small", "dataset": "fashion-mnist", "width": 1.0}
    for key in ("clean_acc", "robust_acc", "clean_loss", "robust_loss", "seconds_per_epoch"):
        assert meta["metrics"][key] == pytest.approx(metrics[key])
    versions = meta["provenance"]["versions"]
    assert versions["torch"] == torch.__version__ and "python" in versions
    assert "torchattacks" in versions
    assert meta["provenance"]["git"] == store.git_revision()  # None outside a git checkout
    # nothing but the two files (atomic writes leave no temporaries behind)
    assert sorted(p.name for p in path.parent.iterdir()) == ["seed0.json", "seed0.safetensors"]

    loaded, meta2 = store.load_model(path)
    assert meta2["metrics"]["robust_acc"] == meta["metrics"]["robust_acc"]
    assert _same_weights(model, loaded)
    loaded.eval()
    x = tiny_data[2]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_train_config_validation():
    for bad, match in [({"method": "banana"}, "train-attack"), ({"arch": "nope"}, "architecture"),
                       ({"dataset": "nope"}, "dataset"), ({"epochs": 0}, "epochs"),
                       ({"lr": "x"}, "lr"), ({"schedule": "step"}, "schedule")]:
        with pytest.raises(UserError, match=match):
            _tiny_cfg(**bad).validate()
    with pytest.raises(UserError, match="eps"):  # an AttackConfig is checked when made
        _tiny_cfg(attack=AttackConfig(eps=-1)).validate()


# ---------------------------------------------------------------- the CLI
def _cli(args, cwd, env_extra=None):
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "ROBUSTPATH_OFFLINE": "1", "PYTHONPATH": path, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "robustpath.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


BAD = [
    pytest.param(["--dataset", "svhn"], "unknown dataset", id="unknown-dataset"),
    pytest.param(["--arch", "resnet9000"], "unknown architecture", id="unknown-arch"),
    pytest.param(["--train-attack", "banana"], "--train-attack", id="bad-method"),
    pytest.param(["--eps", "banana"], "--eps", id="eps-banana"),
    pytest.param(["--eps", "-1"], "--eps", id="eps-negative"),
    pytest.param(["--epochs", "two"], "--epochs", id="argparse-type"),
    pytest.param(["--dataset", "mnist", "--data-root", "EMPTY"], "mnist not found", id="missing-data"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_cli_bad_input_is_one_error_line(tmp_path, args, needle, capsys, monkeypatch):
    """In process, as the subprocess would run it (offline, in ``tmp_path``); the entry
    point's exit code through a subprocess: test_cli_trains_and_writes_a_checkpoint."""
    from robustpath.train.cli import main as train_main

    monkeypatch.setenv("ROBUSTPATH_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [str(empty) if a == "EMPTY" else a for a in args]
    out = tmp_path / "out" / "ep"
    rc = train_main([*args, "--out", str(out)])
    res = capsys.readouterr()
    lines = res.err.strip().splitlines()
    assert rc == 2, res.err
    assert len(lines) == 1, res.err
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in res.err + res.out
    assert not (tmp_path / "out").exists()  # no output file, not even its folder
    assert list(empty.iterdir()) == []  # and no download into the data root


def test_cli_trains_and_writes_a_checkpoint(tmp_path):
    out = tmp_path / "ep"
    res = _cli(["--epochs", "1", "--train-subset", "128", "--test-subset", "32", "--steps", "1",
                "--batch-size", "64", "--eps", "8/255", "--device", "cpu", "--out", str(out)],
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "robust acc" in res.stdout
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["attack"]["eps"] == pytest.approx(8 / 255)
    assert meta["config"]["train_subset"] == 128
    model, _ = store.load_model(out)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_amp_is_bfloat16_autocast_on_cuda_only_and_not_in_cache_keys():
    import contextlib
    import warnings

    from robustpath.device import training_autocast
    from robustpath.paths.fit import CurveTrainConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA here: torch warns it disables the context
        ctx = training_autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert isinstance(training_autocast("cpu"), contextlib.nullcontext)
    assert isinstance(training_autocast(torch.device("cuda"), enabled=False), contextlib.nullcontext)
    # a run on a GPU with AMP and one without share their cached endpoints and curves
    assert TrainConfig(amp=True).cache_key() == TrainConfig(amp=False).cache_key()
    assert CurveTrainConfig(amp=True).cache_key() == CurveTrainConfig(amp=False).cache_key()


# ---------------------------------------------------------------- issue 17: resume, --out
def test_killed_endpoint_training_resumes_exactly(tmp_path, tiny_data):
    """A kill after epoch 1 of 2 resumes at epoch 2 (model, optimizer, scheduler and RNG
    restored) and ends bit-for-bit where an uninterrupted run ends."""
    cfg = _tiny_cfg(0, epochs=2)
    ref, ref_metrics = train_model(cfg, progress=False, data=tiny_data)
    work = tmp_path / "epochs"
    seen = []

    def killed(epoch, record):
        seen.append(epoch)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, progress=False, data=tiny_data, work_dir=work, on_epoch_end=killed)
    assert [p.name for p in sorted(work.iterdir())] == ["epoch-0001.json",
                                                         "epoch-0001.safetensors"]
    model, metrics = train_model(cfg, progress=False, data=tiny_data, work_dir=work,
                                 on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [1, 2]  # the rerun trained epoch 2 only
    assert _same_weights(model, ref)
    assert metrics["history"] == ref_metrics["history"]
    assert metrics["robust_acc"] == ref_metrics["robust_acc"]


def test_damaged_epoch_checkpoint_restarts_from_scratch(tmp_path, tiny_data, capsys):
    cfg = _tiny_cfg(0, epochs=2)
    work = tmp_path / "epochs"

    def killed(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, progress=False, data=tiny_data, work_dir=work, on_epoch_end=killed)
    f = work / "epoch-0001.safetensors"
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    f.write_bytes(bytes(blob))
    model, _ = train_model(cfg, progress=False, data=tiny_data, work_dir=work)
    assert "checksum" in capsys.readouterr().err
    ref, _ = train_model(cfg, progress=False, data=tiny_data)
    assert _same_weights(model, ref)


def test_out_is_taken_literally(tmp_path, tiny_data):
    """Issue 17.4: --out X/eps0.1 and X/eps0.2 both wrote X/eps0.safetensors; dir/ wrote
    dir.safetensors."""
    from robustpath.train.cli import resolve_out

    assert resolve_out(str(tmp_path / "X" / "eps0.1")) == tmp_path / "X" / "eps0.1"
    assert resolve_out(str(tmp_path / "X" / "m.safetensors")) == tmp_path / "X" / "m"
    assert resolve_out(str(tmp_path / "d") + "/") == tmp_path / "d" / "model"
    (tmp_path / "existing").mkdir()
    assert resolve_out(str(tmp_path / "existing")) == tmp_path / "existing" / "model"
    for eps in ("0.1", "0.2"):
        train_endpoint(_tiny_cfg(0), tmp_path / "X" / f"eps{eps}", progress=False, data=tiny_data)
    assert sorted(p.name for p in (tmp_path / "X").iterdir()) == [
        "eps0.1.json", "eps0.1.safetensors", "eps0.2.json", "eps0.2.safetensors"]


def test_cli_unwritable_out_fails_before_training(tmp_path):
    (tmp_path / "afile").write_text("x")
    start = __import__("time").perf_counter()
    res = _cli(["--epochs", "50", "--out", str(tmp_path / "afile" / "ep")], cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "is a file" in res.stderr.strip().splitlines()[-1]
    assert "robust acc" not in res.stdout
    assert __import__("time").perf_counter() - start < 120  # 50 epochs would take far longer


@pytest.mark.slow  # the same validation runs in-process in tests/test_faults.py (fast)
@pytest.mark.parametrize("args,needle", [(["--width", "nan"], "width"),
                                         (["--eps", "1e309"], "--eps"),
                                         (["--step-size", "1e309"], "--step-size"),
                                         (["--eps", "2"], "pixel range"),
                                         (["--seed", "99999999999999999999999"], "seed")])
def test_cli_more_bad_input(tmp_path, args, needle):
    res = _cli([*args, "--out", str(tmp_path / "out" / "ep")], cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "out").exists()
