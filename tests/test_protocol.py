"""The paper preset is Tatro et al.'s protocol: generated table, models, and the options
(train-mode attacks, rotation, Garipov schedule) it needs; paper-fmnist runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from robustpath import bench, models
from robustpath import data as data_mod
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.config import from_preset
from robustpath.engine import keys
from robustpath.errors import UserError
from robustpath.paths import curves
from robustpath.paths.fit import CurveTrainConfig, _seed, train_curve
from robustpath.report import protocol
from robustpath.train.loop import SCHEDULES, _TrainModeTarget, random_rotation


def test_every_paper_setting_holds_in_the_resolved_preset():
    ctx = protocol.context("paper")
    wrong = [(s.name, s.value(ctx), s.expect) for s in protocol.SETTINGS
             if s.status(ctx) == "DIFFERS"]
    assert not wrong
    assert sum(s.status(ctx) == "same" for s in protocol.SETTINGS) >= 40
    # deviations in detail only (padding mode, BN attack mode): the option itself is on
    assert ctx["endpoint"].augment and ctx["curve"].augment and ctx["cfg"].bn_inputs == "adv"


def test_committed_protocol_page_is_generated_from_the_preset():
    assert protocol.DOC.read_text() == protocol.render("paper"), \
        "docs/paper_protocol.md is stale: python -m robustpath.report.protocol --write"


def test_modern_preset_is_flagged_where_it_departs_from_the_paper():
    ctx = protocol.context("modern")
    differs = {s.name for s in protocol.SETTINGS if s.status(ctx) == "DIFFERS"}
    assert {"lr schedule", "attack mode", "rotation angle", "learning rate"} <= differs


@pytest.mark.parametrize("arch,dataset,count", [
    ("tinyten", "cifar10", 86778), ("tinyten", "cifar100", 92628),
    ("resnet32", "cifar10", 466906), ("resnet32", "cifar100", 472756)])
def test_parameter_counts_equal_the_seed_codes(arch, dataset, count):
    # counted on IBM/NeuronAlignment's TinyTenBase / ResNetBase classes
    assert sum(p.numel() for p in models.create(arch, dataset).parameters()) == count


def test_tinyten_layers_are_theirs():
    body = models.create("tinyten", "cifar10").net
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert [c.padding[0] for c in convs] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1]
    assert all(c.bias is not None for c in convs)
    x = torch.rand(2, 3, 32, 32)
    feats = body[:8](models.create("tinyten", "cifar10").normalize(x))
    assert feats.shape == (2, 64, 6, 6)


def test_train_mode_attack_updates_batchnorm_like_theirs():
    model = models.create("tinyten", "fashion-mnist", width=0.25).eval()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    atk = build_attack(AttackConfig(eps=0.1, steps=3), 10)
    before = int(bn.num_batches_tracked)
    atk(model, x, y)
    assert int(bn.num_batches_tracked) == before          # eval mode: untouched
    atk(_TrainModeTarget(model), x, y)
    assert int(bn.num_batches_tracked) >= before + 3       # one update per attack pass
    assert not model.training and not bn.training          # modes restored


def test_rotation_and_garipov_schedule():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    assert torch.equal(random_rotation(x, 0.0, g), x)
    r = random_rotation(x, 90.0, g)
    assert r.shape == x.shape and not torch.equal(r, x)
    assert (r.sum((1, 2, 3)) - x.sum((1, 2, 3))).abs().max() <= 8   # a rotated blob
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = SCHEDULES.get("garipov")(opt, 100, 0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[50] == pytest.approx(0.1)
    assert lrs[70] == pytest.approx(0.1 * (1 - 0.2 / 0.4 * 0.99))
    assert lrs[95] == pytest.approx(0.001)


def _curve_batches(x, y, degrees: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inputs one clean epoch of curve training feeds the curve, and its controls."""
    torch.manual_seed(0)
    a, b = (models.create("cnn-small", "fashion-mnist", 0.25) for _ in range(2))
    curve = curves.build_curve("bezier", a, b)
    seen, forward = [], curve.forward_batch_stats

    def recording(xb, *args, **kw):   # records, then runs the real forward
        seen.append(xb.detach().clone())
        return forward(xb, *args, **kw)

    curve.forward_batch_stats = recording
    cfg = CurveTrainConfig(epochs=1, batch_size=64, lr=0.05, seed=3, attack=None,
                           affine_degrees=degrees)
    train_curve(curve, x, y, cfg, None, progress=False)
    return seen, curve.controls.detach().clone()


def test_curve_rotation_changes_the_training_batches_and_off_leaves_them(fmnist):
    x, y = fmnist[0][:192], fmnist[1][:192]
    loader = data_mod.Batches(x, y, 64, shuffle=True, seed=3, drop_last=True)
    loader.set_epoch(0)
    plain = [xb for xb, _ in loader]
    off, c_off = _curve_batches(x, y, 0.0)
    assert len(off) == len(plain) == 3
    assert all(torch.equal(o, p) for o, p in zip(off, plain))   # off: the loader's batches
    on, c_on = _curve_batches(x, y, 15.0)
    g = torch.Generator().manual_seed(_seed(3, 0, 3))             # epoch 0's rotation stream
    assert all(torch.equal(o, random_rotation(p, 15.0, g)) for o, p in zip(on, plain))
    assert not any(torch.equal(o, p) for o, p in zip(on, plain))
    assert not torch.equal(c_on, c_off)                          # it reaches the fitted curve


def test_curve_rotation_is_keyed_only_when_on_and_on_in_the_paper_presets():
    assert "affine_degrees" not in CurveTrainConfig().cache_key()
    assert CurveTrainConfig(affine_degrees=15.0).cache_key()["affine_degrees"] == 15.0
    with pytest.raises(UserError, match="affine degrees"):
        CurveTrainConfig(affine_degrees=200.0).validate()
    for preset, degrees in (("quick", 0.0), ("modern", 0.0), ("paper", 15.0),
                            ("paper-fmnist", 15.0)):
        cfg = from_preset(preset)
        assert keys.curve_train_config(cfg).affine_degrees == degrees
        train = keys.curve_spec(cfg, "bezier", "a", "b")["train"]
        assert train.get("affine_degrees", 0.0) == degrees
        assert ("affine_degrees" in train) == (degrees > 0)   # old quick keys unchanged


def test_align_samples_preset_flag_and_key():
    assert from_preset("quick").align_samples == from_preset("modern").align_samples == 2000
    assert from_preset("paper").align_samples == from_preset("paper-fmnist").align_samples \
        == 10000
    args = bench.parser().parse_args(["--align-samples", "500"])
    cfg = bench.config_from_args(args)
    assert cfg.align_samples == 500
    assert keys.align_spec(cfg, "activation", "a", "b")["samples"] == 500
    assert keys.align_spec(from_preset("quick"), "activation", "a", "b")["samples"] == 2000
    with pytest.raises(UserError, match="--align-samples must be >= 1"):
        from_preset("quick", align_samples=0)


@pytest.mark.slow
def test_paper_fmnist_preset_runs_end_to_end(tmp_path):
    """The paper protocol (train-mode attacks, rotation, Garipov, curve lr 0.1, BN on
    adversarial inputs) end to end, shrunk to seconds."""
    cfg = from_preset("paper-fmnist")
    assert (cfg.schedule, cfg.curve_schedule, cfg.attack_mode, cfg.affine_degrees,
            cfg.curve_lr) == ("garipov", "garipov", "train", 15.0, 0.1)
    out = tmp_path / "run"
    rc = bench.main(["--preset", "paper-fmnist", "--epochs", "1", "--curve-epochs", "1",
                     "--train-subset", "256", "--test-subset", "64", "--t-points", "3",
                     "--bn-batches", "1", "--bootstrap", "20", "--out", str(out),
                     "--no-strong", "--no-progress"])
    assert rc == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["attack_mode"] == "train" and saved["schedule"] == "garipov"
    assert (out / "records.csv").is_file()


@pytest.mark.slow
def test_paper_fmnist_preset_full(tmp_path):
    assert bench.main(["--preset", "paper-fmnist", "--out", str(tmp_path / "r"),
                       "--no-progress"]) == 0


def test_issue_27_differences_are_declared_deviations_not_same():
    # (a) augmented BN batches, (b) augmentation order, (c) PAM scoring loader, (d) BvN
    # tolerance, (e) unclamped random start, (f) BN statistics inside the PGD call
    ctx = protocol.context("paper")
    status = {s.name: s.status(ctx) for s in protocol.SETTINGS}
    for name in ("BN batches augmented", "augmentation order", "candidates scored on",
                 "BvN tolerance", "PGD random start", "BN attack mode"):
        assert status[name] == "deviation", name
    rows = {s.name: s for s in protocol.SETTINGS}
    assert "5e-4" in rows["BvN tolerance"].theirs
    assert all("|" not in s.theirs + s.note for s in protocol.SETTINGS)   # Markdown cells
    assert "every forward pass" in rows["BN attack mode"].theirs
