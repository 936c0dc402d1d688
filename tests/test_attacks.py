"""Attacks: threat-model constraints, mode restoration, agreement with torchattacks,
the accuracy-only (early-stopping) PGD, and ``8/255`` parsing."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustpath import data, models, runtime
from robustpath.attacks.base import PGD, AttackConfig, build_attack, eval_mode
from robustpath.attacks.metrics import per_example
from robustpath.errors import UserError
from robustpath.numbers import parse_fraction

TOL = 1e-6


@pytest.fixture(scope="module")
def batch(fmnist):
    x_te, y_te = fmnist[2], fmnist[3]
    return x_te[:64], y_te[:64]


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return models.create("cnn-small", "fashion-mnist", 0.5).eval()


def _dist(norm: str, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


CASES = [
    pytest.param({"name": "pgd", "norm": "linf", "eps": 8 / 255, "steps": 4}, id="pgd-linf"),
    pytest.param({"name": "pgd", "norm": "linf", "eps": 0.3, "steps": 3, "restarts": 3}, id="pgd-linf-restarts"),
    pytest.param({"name": "pgd", "norm": "l2", "eps": 1.0, "steps": 4, "step_size": 0.5}, id="pgd-l2"),
    pytest.param({"name": "pgd", "norm": "l2", "eps": 3.0, "steps": 3, "restarts": 2, "step_size": 2.0},
                 id="pgd-l2-restarts"),
    pytest.param({"name": "pgd", "norm": "linf", "eps": 0.2, "steps": 4, "restarts": 2, "early_stop": True},
                 id="pgd-linf-early-stop"),
    pytest.param({"name": "pgd", "norm": "l2", "eps": 2.0, "steps": 4, "early_stop": True}, id="pgd-l2-early-stop"),
    pytest.param({"name": "pgd", "norm": "linf", "eps": 0.1, "steps": 3, "random_start": False}, id="pgd-no-rs"),
    pytest.param({"name": "fgsm", "norm": "linf", "eps": 8 / 255}, id="fgsm"),
    pytest.param({"name": "fgsm", "norm": "linf", "eps": 0.3}, id="fgsm-big"),
    pytest.param({"name": "ta-pgd", "norm": "linf", "eps": 0.1, "steps": 3}, id="ta-pgd"),
]


@pytest.mark.parametrize("kw", CASES)
def test_output_in_eps_ball_and_pixel_range(small_model, batch, kw):
    x, y = batch
    atk = build_attack(AttackConfig(seed=0, **kw))
    x_adv = atk(small_model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert float(_dist(kw["norm"], x_adv, x).max()) <= kw["eps"] + TOL
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert not torch.equal(x_adv, x)  # it did move


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_raises_the_loss(small_model, batch, norm, eps):
    x, y = batch
    x_adv = build_attack(AttackConfig(norm=norm, eps=eps, steps=5, seed=0))(small_model, x, y)
    clean = per_example(small_model, x, y)
    adv = per_example(small_model, x_adv, y)
    # an untrained model is nearly flat: every loss goes up, by a little
    assert adv.mean_loss > clean.mean_loss + 0.03
    assert (adv.loss > clean.loss).float().mean() > 0.9


def _modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("kw", CASES)
def test_attacks_restore_training_mode_and_requires_grad(batch, kw):
    torch.manual_seed(0)
    model = models.create("cnn-small", "fashion-mnist", 0.5)
    model.train()
    model.net[0][1].eval()  # a mixed state must come back exactly
    frozen = model.net[0][0].weight
    frozen.requires_grad_(False)
    before = _modes(model)
    stats = model.net[2][1].running_mean.clone()
    x, y = batch
    build_attack(AttackConfig(seed=0, **kw))(model, x, y)
    assert _modes(model) == before
    assert torch.equal(model.net[2][1].running_mean, stats)  # attacked in eval mode
    assert not frozen.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "net.0.0.weight")
    assert all(p.grad is None for p in model.parameters())  # no weight gradients left behind


@pytest.mark.parametrize("arch,dataset", [("cnn-small", "fashion-mnist"), ("resnet20", "cifar10")])
def test_attacks_leave_the_weights_alone(arch, dataset):
    """The CPU fast path runs channels-last *copies* of the conv weights."""
    torch.manual_seed(0)
    model = models.create(arch, dataset, 0.5).eval()
    before = {k: (v.clone(), v.stride(), v.data_ptr()) for k, v in model.state_dict().items()}
    x = torch.rand(4, *data.info(dataset).shape)
    y = torch.arange(4)
    for name in ("pgd", "fgsm"):
        x_adv = build_attack(AttackConfig(name=name, eps=0.1, steps=2, seed=0))(model, x, y)
        assert x_adv.is_contiguous()
    for k, v in model.state_dict().items():
        value, stride, ptr = before[k]
        assert torch.equal(v, value) and v.stride() == stride and v.data_ptr() == ptr, k


def test_eval_mode_restores_on_exception():
    model = models.create("cnn-small", "fashion-mnist", 0.5).train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training and all(m.training for m in model.modules())


def test_pgd_is_seeded(small_model, batch):
    x, y = batch
    cfg = AttackConfig(eps=0.1, steps=3, seed=5)
    assert torch.equal(build_attack(cfg)(small_model, x, y), build_attack(cfg)(small_model, x, y))
    other = build_attack(AttackConfig(eps=0.1, steps=3, seed=6))(small_model, x, y)
    assert not torch.equal(build_attack(cfg)(small_model, x, y), other)


def test_zero_eps_and_none_return_the_input(small_model, batch):
    x, y = batch
    assert torch.equal(build_attack(AttackConfig(eps=0, steps=3))(small_model, x, y), x)
    assert torch.equal(build_attack(AttackConfig(name="none"))(small_model, x, y), x)


# ---------------------------------------------------------------- on a trained model
@pytest.fixture(scope="module")
def trained(trained_pair, fmnist):
    model = trained_pair[0]
    return model, fmnist[2], fmnist[3]


@pytest.mark.parametrize("kw", [{"name": "pgd", "eps": 0.1, "steps": 5}, {"name": "fgsm", "eps": 0.1},
                                {"name": "pgd", "norm": "l2", "eps": 1.5, "steps": 5, "step_size": 0.5}])
def test_robust_accuracy_below_clean(trained, kw):
    model, x, y = trained
    clean = per_example(model, x, y).accuracy
    robust = per_example(model, x, y, build_attack(AttackConfig(seed=0, **kw))).accuracy
    assert robust <= clean
    assert robust < clean - 0.05  # a real attack on a real model bites
    assert robust > 0.1  # and the PGD-trained model resists somewhat (chance is 0.1)


def test_our_pgd_agrees_with_torchattacks(trained):
    """Same model, data, eps, steps and step size: robust accuracy within 2 points."""
    model, x, y = trained
    kw = {"eps": 0.1, "steps": 10, "step_size": 0.025}
    ours = per_example(model, x, y, build_attack(AttackConfig(name="pgd", seed=0, **kw))).accuracy
    torch.manual_seed(0)
    theirs = per_example(model, x, y, build_attack(AttackConfig(name="ta-pgd", **kw))).accuracy
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


@pytest.mark.parametrize("kw", [{"eps": 0.1, "steps": 10}, {"norm": "l2", "eps": 1.5, "steps": 6, "step_size": 0.5},
                                {"eps": 0.1, "steps": 4, "restarts": 2}])
def test_early_stop_pgd_gives_the_same_robust_accuracy(trained, kw):
    model, x, y = trained
    full = per_example(model, x, y, build_attack(AttackConfig(seed=3, **kw)))
    es = per_example(model, x, y, build_attack(AttackConfig(seed=3, early_stop=True, **kw)))
    # same start, same iterates until an example is broken: every example the full
    # attack breaks stays broken (up to float noise from the smaller batches) ...
    missed = int((~full.correct & es.correct).sum())
    assert missed <= 1, missed
    # ... and examples the full attack breaks and then loses are rare
    assert abs(full.accuracy - es.accuracy) <= 0.01, (full.accuracy, es.accuracy)


def test_channels_last_path_matches_the_default_layout(trained, monkeypatch):
    model, x, y = trained
    cfg = AttackConfig(eps=0.1, steps=5, seed=0)
    fast = build_attack(cfg)(model, x, y)
    with runtime.use(runtime.Runtime(channels_last_cpu=False)):
        plain = build_attack(cfg)(model, x, y)
    # same start and steps; only float rounding differs between the two layouts
    assert float((fast - plain).abs().mean()) < 1e-3
    with torch.no_grad():
        acc_fast = (model(fast).argmax(1) == y).float().mean()
        acc_plain = (model(plain).argmax(1) == y).float().mean()
    assert abs(float(acc_fast - acc_plain)) <= 0.01


def test_early_stop_forwards_fewer_examples(trained):
    model, x, y = trained
    counts = {}

    def count(_module, inputs):
        counts["n"] = counts.get("n", 0) + len(inputs[0])

    handle = model.register_forward_pre_hook(count)
    try:
        for es in (False, True):
            counts["n"] = 0
            build_attack(AttackConfig(eps=0.1, steps=10, seed=0, early_stop=es))(model, x, y)
            counts[es] = counts["n"]
    finally:
        handle.remove()
    assert counts[False] == 10 * len(x)  # one forward per step, no extra evaluation pass
    assert counts[True] < 0.8 * counts[False]


# ---------------------------------------------------------------- configs and parsing
def test_attack_config_validation():
    assert AttackConfig(eps="8/255").validate().eps == pytest.approx(8 / 255)
    assert AttackConfig(step_size="1/255").validate().step_size == pytest.approx(1 / 255)
    for bad, match in [({"name": "cw"}, "unknown attack 'cw'"), ({"norm": "l3"}, "unknown norm"),
                       ({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"),
                       ({"eps": "banana"}, "eps"), ({"eps": -0.1}, "eps"),
                       ({"step_size": 0}, "step size")]:
        with pytest.raises(UserError, match=match):
            AttackConfig(**bad).validate()
    with pytest.raises(UserError, match="Linf"):
        build_attack(AttackConfig(name="fgsm", norm="l2"))


def test_pgd_default_step_size_is_eps_over_4():
    assert PGD(AttackConfig(eps=8 / 255)).step_size == pytest.approx(2 / 255)


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.031", 0.031), (" 2/255 ", 2 / 255),
                                        ("1", 1.0), ("0", 0.0), ("1e-3", 1e-3), (0.5, 0.5), (3, 3.0)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["banana", "", "8/0", "8//255", "nan", "inf", "-1", "-8/255",
                                  float("nan"), float("inf"), -0.5, "1/2/3"])
def test_parse_fraction_rejects(text):
    with pytest.raises(UserError):
        parse_fraction(text, name="eps")


def test_parse_fraction_zero_and_name():
    with pytest.raises(UserError, match="step size"):
        parse_fraction("0", name="step size", allow_zero=False)
    with pytest.raises(UserError, match="^--eps must"):
        parse_fraction("x", name="--eps")


@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_parse_fraction_property(num, den):
    value = parse_fraction(f"{num}/{den}")
    assert value == float(Fraction(num, den))
    assert math.isclose(value, num / den, rel_tol=1e-15)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_parse_fraction_roundtrips_floats(f):
    assert parse_fraction(repr(f)) == f
    assert parse_fraction(f) == f
