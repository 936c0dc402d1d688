"""Shared fixtures: small real Fashion-MNIST subsets and a trained endpoint pair.

Everything is seeded so tests cannot flake; nothing downloads (``download=False``).
"""

from __future__ import annotations

import pytest
import torch

from robustpath import data
from robustpath.attacks.base import AttackConfig
from robustpath.train.loop import TrainConfig, train_model

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def _zoo_cache_in_tmp(tmp_path_factory):
    """`zoo list` caches alignability verdicts under ~/.cache; tests keep theirs in tmp
    (subprocesses inherit the variable)."""
    import os

    mp = pytest.MonkeyPatch()
    if "ROBUSTPATH_ZOO_CACHE" not in os.environ:
        mp.setenv("ROBUSTPATH_ZOO_CACHE", str(tmp_path_factory.mktemp("zoo_align")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _serial_runs():
    """Runs in tests are serial in process unless a test passes --workers: many tests
    patch stage functions, which worker processes would not see (subprocesses inherit
    the variable; robustpath.engine.executors.default_workers)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ROBUSTPATH_WORKERS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def fmnist():
    """(x_train [3000], y_train, x_test [500], y_test) from real Fashion-MNIST."""
    x_tr, y_tr = data.load("fashion-mnist", train=True, subset=3000, seed=1, download=False)
    x_te, y_te = data.load("fashion-mnist", train=False, subset=500, seed=2, download=False)
    return x_tr, y_tr, x_te, y_te


def small_train_config(seed: int, **kw) -> TrainConfig:
    base = dict(seed=seed, epochs=3, lr=0.05, train_subset=3000, test_subset=500,
                attack=AttackConfig(eps=0.1, steps=3), eval_attack=AttackConfig(eps=0.1, steps=5, seed=0))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def trained_pair(fmnist):
    """Two PGD-trained ``cnn-small`` models (seeds 0 and 1, eps 0.1, 3 epochs on 3000
    Fashion-MNIST images) and their metrics: ``(model_a, model_b, metrics_a, metrics_b)``."""
    out = []
    for seed in (0, 1):
        model, metrics = train_model(small_train_config(seed), progress=False, data=fmnist)
        out.append((model, metrics))
    return out[0][0], out[1][0], out[0][1], out[1][1]
