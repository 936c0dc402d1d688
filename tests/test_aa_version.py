"""`--aa-version` / `--aa-attacks` choose the version of `--attack autoattack` (the path
attack) as well as the strong stage's (issue 14: "the engine of --attack autoattack and of
every strong evaluation, with version standard, plus, rand and a custom list")."""

import pytest

from robustpath.attacks.autoattack import StandardAutoAttack
from robustpath.config import BenchConfig
from robustpath.errors import UserError
from robustpath.zoo.config import CompareConfig


def _bench(**kw):
    return BenchConfig(**kw).validate()


def test_path_autoattack_gets_the_chosen_version():
    cfg = _bench(attack="autoattack", aa_version="custom", aa_attacks=["apgd-ce", "apgd-t"],
                 strong=False)
    atk = StandardAutoAttack(cfg.eval_attack(), num_classes=10)
    assert (atk.version, list(atk.attacks)) == ("custom", ["apgd-ce", "apgd-t"])
    atk = StandardAutoAttack(_bench(attack="autoattack", aa_version="plus").eval_attack(), 10)
    assert atk.version == "plus"


def test_standard_version_keeps_the_old_attack_config():
    # the standard version stays None in the config: the eval keys of earlier runs still hit
    std = _bench(attack="autoattack").eval_attack()
    assert std.aa_version is None and std.aa_attacks is None
    assert StandardAutoAttack(std, 10).version == "standard"
    assert _bench(attack="pgd", aa_version="plus").eval_attack().aa_version is None


def test_refusals():
    with pytest.raises(UserError, match="--no-strong.*--attack autoattack"):
        _bench(attack="pgd", aa_version="plus", strong=False)
    with pytest.raises(UserError):
        _bench(attack="autoattack", aa_version="custom", strong=False)   # custom needs a list
    with pytest.raises(UserError):
        _bench(attack="autoattack", aa_version="bogus", strong=False)


def test_zoo_path_autoattack_gets_the_chosen_version():
    cfg = CompareConfig(models=["a", "b"], attack="autoattack", aa_version="rand", strong=False)
    cfg.validate()
    assert StandardAutoAttack(cfg.eval_attack(), 10).version == "rand"
