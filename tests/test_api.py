"""The front door (``import robustpath as rp``): the example script runs, the traps of
``evaluate_path`` / ``train_curve`` are closed, and every public call refuses bad input
with one clear UserError."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustpath as rp
from robustpath.errors import UserError
from robustpath.paths.evaluate import curve_speed

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "align_and_fit.py"
ATTACK = rp.AttackConfig(eps=0.1, steps=1, seed=0)


@pytest.fixture(scope="module")
def pair():
    """Two randomly initialised cnn-small models (with BatchNorm)."""
    torch.manual_seed(0)
    a = rp.create_model("cnn-small")
    torch.manual_seed(1)
    return a.eval(), rp.create_model("cnn-small").eval()


@pytest.fixture(scope="module")
def small(fmnist):
    x_tr, y_tr, x_te, y_te = fmnist
    return x_tr[:256], y_tr[:256], x_te[:48], y_te[:48]


def test_import_is_cheap_and_lazy():
    code = "import sys, robustpath; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    from robustpath.align import align  # submodules load on attribute access

    assert rp.align.align is align and rp.AttackConfig is rp.attacks.base.AttackConfig
    with pytest.raises(AttributeError):
        rp.no_such_name  # noqa: B018
    # a front-door name equal to a submodule's would be replaced by the module on import
    package = Path(rp.__file__).parent
    for name in rp.__all__:
        assert not (package / f"{name}.py").exists() and not (package / name).is_dir(), name


def test_example_script_runs_on_tiny_data(tmp_path):
    spec = importlib.util.spec_from_file_location("align_and_fit", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    metrics = example.main(["--arch", "cnn-small", "--train", "256", "--test", "48",
                            "--epochs", "1", "--steps", "1", "--ts", "3", "--bootstrap", "40",
                            "--out", str(tmp_path)])
    assert (tmp_path / "bezier.png").stat().st_size > 0
    assert (tmp_path / "bezier.pdf").stat().st_size > 0
    for name in ("clean_acc_min", "robust_acc_min", "robust_acc_avg"):
        m = metrics[name]
        assert 0.0 <= m["lo"] <= m["value"] <= m["hi"] <= 1.0


@pytest.mark.slow  # 15-27 s on 2 cores, most of it weight matching of two ResNet-18s
def test_readme_python_section_runs_as_written_on_tiny_sizes(tmp_path, monkeypatch):
    """The README's Python block (two torchvision ResNet-18s) is executed as written,
    only its sizes shrunk: every replacement must apply, so an edited README that no
    longer runs, or no longer matches these sizes, fails here. (The fast tier runs
    examples/align_and_fit.py, the same calls on cnn-small.)"""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Python\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    for big, tiny in (("subset=2000", "subset=64"), ("subset=500", "subset=16"),
                      ("epochs=2", "epochs=1"), ("steps=5", "steps=1"), ("ts=11", "ts=3")):
        assert big in block, big
        block = block.replace(big, tiny)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Python section)", "exec"), {"__name__": "readme"})
    assert (tmp_path / "bezier.png").stat().st_size > 0
    assert (tmp_path / "bezier.pdf").stat().st_size > 0


# ---------------------------------------------------------------- evaluate_path traps
def test_batchnorm_without_bn_data_is_refused(pair, small):
    a, b = pair
    _, _, x, y = small
    curve = rp.build_curve("line", a, b)
    with pytest.raises(UserError, match="BatchNorm.*bn_data=\\(x_train, y_train\\)"):
        rp.evaluate_path(curve, x, y, ATTACK, ts=3, progress=False)
    with pytest.raises(UserError, match="BatchNorm"):  # the module-level function too
        rp.paths.evaluate.evaluate_path(curve.model_at, [0.0, 0.5, 1.0], x, y,
                                  rp.build_attack(ATTACK), progress=False)
    # the explicit opt-out evaluates the statistics as they are
    res = rp.evaluate_path(curve, x, y, ATTACK, ts=3, recompute_bn=False, progress=False)
    assert res.clean_correct.shape == (3, len(y))


def test_networks_without_batchnorm_need_no_bn_data(small):
    _, _, x, y = small
    torch.manual_seed(0)
    a, b = rp.create_model("mlp"), rp.create_model("mlp")
    res = rp.evaluate_path(rp.build_curve("line", a, b), x, y, ATTACK, ts=2, progress=False)
    assert res.robust_correct.shape == (2, len(y))


def test_speed_is_computed_for_a_curve_and_unit_for_a_callable(pair, small):
    a, b = pair
    x_tr, y_tr, x, y = small
    curve = rp.build_curve("bezier", a, b)
    with torch.no_grad():  # bend the curve: its speed then varies along t
        curve.controls.add_(0.5 * torch.randn(curve.controls.shape,
                                              generator=torch.Generator().manual_seed(0)))
    ts = [0.0, 0.5, 1.0]
    kw = dict(bn_data=(x_tr, y_tr), bn_batches=1, ts=ts, progress=False)
    want = curve_speed(curve.params_at, ts)
    for path in (curve, curve.model_at):  # the curve itself or its bound model_at
        res = rp.evaluate_path(path, x, y, ATTACK, **kw)
        np.testing.assert_allclose(res.speed, want)
    assert not np.allclose(want, want[0])  # not unit speed in disguise
    plain = rp.evaluate_path(lambda t: curve.model_at(t), x, y, ATTACK, **kw)
    np.testing.assert_array_equal(plain.speed, np.ones(3))
    # a path of zero length: unit speed, so averages stay the plain mean
    still = rp.evaluate_path(rp.build_curve("line", a, a), x, y, ATTACK, **kw)
    np.testing.assert_array_equal(still.speed, np.ones(3))


def test_fit_curve_in_memory_writes_nothing(pair, small, tmp_path, monkeypatch):
    a, b = pair
    x_tr, y_tr, _, _ = small
    monkeypatch.chdir(tmp_path)
    curve = rp.build_curve("bezier", a, b)
    before = curve.controls.detach().clone()
    m = rp.fit_curve(curve, x_tr, y_tr, epochs=1, batch_size=128, attack=None, progress=False)
    assert m["epochs"] == 1 and np.isfinite(m["train_loss"])
    assert not torch.equal(before, curve.controls.detach())
    assert list(tmp_path.iterdir()) == []
    # the module-level function accepts out_dir=None too
    from robustpath.paths.fit import CurveTrainConfig, train_curve

    train_curve(curve, x_tr, y_tr, CurveTrainConfig(epochs=1, attack=None), None, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- validation
def test_front_door_validates_inputs(pair, small):
    a, b = pair
    x_tr, y_tr, x, y = small
    curve = rp.build_curve("line", a, b)
    res = rp.evaluate_path(curve, x, y, ATTACK, ts=np.int64(2), recompute_bn=False,
                           progress=False)
    np.testing.assert_array_equal(res.ts, [0.0, 1.0])
    bad = [
        (lambda: rp.align_models(a, "b"), "model_b must be a torch.nn.Module"),
        (lambda: rp.align_models(a, b, method="nope"), "nope"),
        (lambda: rp.align_models(a, b, method="activation"), "needs data"),
        (lambda: rp.build_curve("line", a, b, bends=-1), "bends"),
        (lambda: rp.build_curve("spiral", a, b), "spiral"),
        (lambda: rp.build_curve("line", a, nn.Linear(2, 2)), ""),
        (lambda: rp.fit_curve(curve, x_tr * 255, y_tr), r"\[0, 1\]"),
        (lambda: rp.fit_curve(curve, x_tr, y_tr[:10]), "same, non-zero length"),
        (lambda: rp.fit_curve(curve, x_tr[:, 0], y_tr), r"\[N, C, H, W\]"),
        (lambda: rp.fit_curve(curve, x_tr, y_tr, epoch=3), "unknown setting.*epoch"),
        (lambda: rp.fit_curve(a, x_tr, y_tr), "curve from rp.build_curve"),
        (lambda: rp.evaluate_path(curve, x, y.float(), ATTACK), "integer labels"),
        (lambda: rp.evaluate_path(curve, x, y, "pgd"), "AttackConfig"),
        (lambda: rp.evaluate_path(curve, x, y, ATTACK, ts=1), "ts must be"),
        (lambda: rp.evaluate_path(curve, x, y, ATTACK, ts=[0.0, 1.5]), r"\[0, 1\]"),
        (lambda: rp.evaluate_path(curve, x, y, ATTACK, bn_data=(x_tr, y_tr),
                                  recompute_bn=False), "one or the other"),
        (lambda: rp.evaluate_path(curve, x, y, ATTACK, bn_data=[], progress=False),
         "no batches"),
        (lambda: rp.evaluate_path(42, x, y, ATTACK), "path must be"),
        (lambda: rp.evaluate_path(curve, x, y, ATTACK, bn_data=5), "bn_data must be"),
        (lambda: rp.evaluate_path(curve, x, y, ATTACK, num_classes=int(y.max())),
         "num_classes must be"),
        (lambda: rp.path_metrics(res.to_arrays()), "PathResult"),
        (lambda: rp.path_metrics(res, bootstrap=0), "bootstrap"),
        (lambda: rp.plot_path({}, "x"), "non-empty"),
        (lambda: rp.plot_path({"a": 1}, "x"), "not a PathResult"),
        (lambda: rp.load_data("fashion-mnist", subset=0), "subset"),
        (lambda: rp.load_data("imagenet-21k"), "imagenet-21k"),
        (lambda: rp.create_model("resnet9000"), "resnet9000"),
    ]
    for call, message in bad:
        with pytest.raises(UserError, match=message):
            call()
