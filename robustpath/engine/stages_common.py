"""What every stage of :mod:`robustpath.engine.stages` shares: the run's data
(:class:`RunData`, loaded once), where a stage stores its output (``<run>/ckpt/<stage>/``)
and the check of a cached checkpoint's sidecar (:func:`_check_meta`).

Split out of :mod:`robustpath.engine.stages` so the alignment stage
(:mod:`robustpath.engine.stages_align`) uses them without importing the other stages;
``robustpath.engine.stages`` re-exports every name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from robustpath import data as data_mod
from robustpath.config import BenchConfig
from robustpath.io.store import CacheError, checkpoint_files, config_hash, to_json
from robustpath.train.loop import TrainConfig, check_labels


@dataclass
class RunData:
    """The run's data, loaded once: training subset, test subset, alignment subset."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @classmethod
    def load(cls, cfg: BenchConfig) -> RunData:
        x_tr, y_tr, x_te, y_te = data_mod.load_subsets(cfg.dataset, cfg.data_root,
                                                       cfg.train_subset, cfg.test_subset)
        classes = data_mod.info(cfg.dataset).num_classes
        check_labels(y_tr, classes, f"{cfg.dataset} training data")  # before any work
        check_labels(y_te, classes, f"{cfg.dataset} test data")
        return cls(x_tr, y_tr, x_te, y_te, classes)

    def train_batches(self, cfg: BenchConfig, seed: int = 0, device="cpu", limit: int | None = None):
        x, y = (self.x_train, self.y_train) if limit is None else (self.x_train[:limit],
                                                                   self.y_train[:limit])
        return data_mod.Batches(x, y, cfg.batch_size, shuffle=True, seed=seed, device=device)


def _ckpt(run_dir: Path, stage: str, name: str) -> Path:
    return Path(run_dir) / "ckpt" / stage / name


def _check_meta(meta: dict, path: Path, *, config: str | None = None, spec: dict | None = None,
                **kinds) -> None:
    """A cached checkpoint's sidecar must hold what the stage reads (``kinds``: field ->
    type) and be bound to this stage's key (``config``: hash of its TrainConfig cache
    key; ``spec``: the alignment spec)."""
    files = checkpoint_files(path)
    for name, kind in kinds.items():
        if not isinstance(meta.get(name), kind):
            raise CacheError(f"{files[1]} lacks its {name}", files)
    if config is not None:
        try:
            got = config_hash(TrainConfig.from_dict(meta["config"]).cache_key())
        except (KeyError, TypeError, ValueError):
            got = None
        if got != config:
            raise CacheError(f"{files[1]} was trained with another configuration", files)
    if spec is not None and meta.get("spec") != json.loads(to_json(spec)):
        raise CacheError(f"{files[1]} was computed for another configuration", files)

