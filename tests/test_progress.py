"""Progress bars (robustpath.progress): named by what they count, moving inside epochs and
inside AutoAttack, whole lines without carriage returns when stderr is not a terminal,
off under Runtime(progress=False), and never a change to what is computed."""

from __future__ import annotations

import re

import pytest
import torch

from robustpath import models, progress, runtime
from robustpath.attacks.base import AttackConfig
from robustpath.paths.curves import build_curve
from robustpath.paths.fit import CurveTrainConfig, train_curve
from robustpath.train.loop import TrainConfig, train_model


@pytest.fixture
def every_line(monkeypatch):
    """Line mode prints a line at every update (not every 30 s)."""
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)


def test_line_mode_has_no_carriage_returns_and_short_bars_print_nothing(capsys, monkeypatch):
    for _ in progress.bar(range(5), desc="short one"):  # shorter than LINE_INTERVAL
        pass
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    bar = progress.bar(total=3, desc="long one", unit="pt")
    for _ in range(3):
        bar.update(1)
    progress.write("a note")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert "long one: 3/3 pt" in err and "a note\n" in err
    assert all(line.startswith(("long one: ", "a note")) for line in err.splitlines())


def test_runtime_progress_false_and_progress_false_show_nothing(capsys, every_line):
    with runtime.use(runtime.Runtime(progress=False)):
        for _ in progress.bar(range(3), desc="hidden"):
            pass
    for _ in progress.bar(range(3), desc="hidden", progress=False):
        pass
    assert capsys.readouterr().err == ""


def test_training_bars_move_per_batch_are_named_and_change_nothing(fmnist, capsys, every_line):
    x_tr, y_tr, x_te, y_te = fmnist
    data = (x_tr[:512], y_tr[:512], x_te[:50], y_te[:50])
    cfg = dict(seed=3, epochs=1, batch_size=128, train_subset=512, test_subset=50,
               attack=AttackConfig(eps=0.1, steps=1), eval_attack=AttackConfig(eps=0.1, steps=1, seed=0))
    shown, _ = train_model(TrainConfig(**cfg), progress=True, data=data)
    err = capsys.readouterr().err
    assert "\r" not in err
    steps = re.findall(r"train cnn-small seed 3 epoch 1/1: (\d)/4 batch", err)
    assert {"1", "2", "3", "4"} <= set(steps)  # inside the epoch, not once per epoch
    hidden, _ = train_model(TrainConfig(**cfg), progress=False, data=data)
    for a, b in zip(shown.state_dict().values(), hidden.state_dict().values()):
        assert torch.equal(a, b)

    ccfg = CurveTrainConfig(epochs=1, batch_size=128, lr=0.02, attack=AttackConfig(eps=0.1, steps=1))
    c1 = build_curve("bezier", shown, hidden, bends=1)
    train_curve(c1, data[0], data[1], ccfg, None, progress=True, desc="curve none/bezier s0-1")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert {"1", "2", "3", "4"} <= set(re.findall(r"curve none/bezier s0-1 epoch 1/1: (\d)/4 batch", err))
    c2 = build_curve("bezier", shown, hidden, bends=1)
    train_curve(c2, data[0], data[1], ccfg, None, progress=False)
    assert torch.equal(c1.controls, c2.controls)


def test_autoattack_bars_name_the_sub_attack_and_batch_and_change_nothing(capsys, every_line):
    pytest.importorskip("pyautoattack")
    from robustpath.attacks.autoattack import StandardAutoAttack

    torch.manual_seed(0)
    model = models.create("mlp", "fashion-mnist", width=0.1).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example clean-correct: all are attacked
    aa = StandardAutoAttack(AttackConfig(name="autoattack", eps=0.01, aa_version="custom",
                                         aa_attacks=["apgd-ce"], seed=0))
    shown = aa.run(model, x, y, batch_size=4, progress=True, desc="strong none/line s0-1 t=0.5 AA")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "strong none/line s0-1 t=0.5 AA apgd-ce batch 1/2" in err
    assert "strong none/line s0-1 t=0.5 AA apgd-ce batch 2/2" in err
    hidden = aa.run(model, x, y, batch_size=4)
    assert torch.equal(shown.robust, hidden.robust) and torch.equal(shown.x_adv, hidden.x_adv)
    assert shown.grad_passes == hidden.grad_passes
