"""The zoo as an endpoint source of the engine (:mod:`robustpath.engine.sources`).

``python -m robustpath.zoo compare`` runs the plan bench and sweeps run
(:func:`robustpath.engine.plan.build_plan` with ``source="zoo"``): its endpoint nodes load
RobustBench models (:class:`robustpath.zoo.plan.ZooEndpoint`), every node downstream
(alignment, curve, evaluation, strong, curvature, plane) is the shared stage code.

The engine imports no zoo module (the library never imports the commands built on it):
this module registers ``zoo`` in :data:`robustpath.engine.sources.SOURCES` when imported,
and the registry imports it on first use of the name (``PLUGINS``), in a worker process
or a Ray task as well. The configuration the engine sees is :class:`ZooStageConfig`: the
bench's dataclass (the shared groups copied from the comparison's
:class:`robustpath.zoo.config.CompareConfig`, ``arch = "zoo"``, no seeds), carrying the
comparison itself for the source (which models, where, which pairs, trusted or not).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from pathlib import Path

from robustpath.config import BenchConfig, StageConfig
from robustpath.engine.sources import SOURCES
from robustpath.zoo.config import STAGE_FIELDS, CompareConfig
from robustpath.zoo.plan import ZooEndpoint, resolve_pairs


@dataclass
class ZooStageConfig(BenchConfig):
    """The stages' settings of a comparison (:func:`stage_config`) plus the comparison.
    ``to_dict`` is the comparison's (its ``config.json``: RobustBench's threat name and
    the models' architectures added by :mod:`robustpath.zoo.run`)."""

    compare: CompareConfig | None = None
    written: dict | None = None  # the config.json of the run (None: compare's fields)

    def to_dict(self) -> dict:
        return dict(self.written) if self.written is not None else self.compare.to_dict()


def stage_config(cfg: CompareConfig, written: dict | None = None) -> ZooStageConfig:
    """The shared stages' settings for a comparison: the same dataclass the bench runs,
    every shared group (:class:`robustpath.config.StageConfig`) and the bench-only stage
    fields the zoo has (:data:`robustpath.zoo.config.STAGE_FIELDS`: curvature, plane)
    taken from the zoo's config as they are (``arch``/``seeds`` are unused: endpoints
    come from the zoo). Every other field keeps BenchConfig's default, as the zoo's
    cache keys always had it."""
    names = [f.name for f in fields(StageConfig)] + list(STAGE_FIELDS)
    shared = {n: getattr(cfg, n) for n in names}
    return ZooStageConfig(preset="zoo", arch="zoo", seeds=[], **copy.deepcopy(shared),
                          compare=cfg, written=written)


_ENDPOINTS: dict[tuple, ZooEndpoint] = {}  # per process: each file hashed and loaded once


def endpoint(cfg: ZooStageConfig, name: str) -> ZooEndpoint:
    """The :class:`ZooEndpoint` of model ``name`` of the comparison (one per process)."""
    c = cfg.compare
    at = (name, str(Path(c.model_dir).resolve()), c.dataset, c.threat, c.trust_checkpoints,
          c.expect_sha256.get(name))
    if at not in _ENDPOINTS:
        _ENDPOINTS[at] = ZooEndpoint(name, c)
    return _ENDPOINTS[at]


def forget_endpoints() -> None:
    """Drop the loaded models (after a comparison: they are large)."""
    _ENDPOINTS.clear()


@SOURCES.register("zoo")
class ZooSource:
    """Endpoint ``name``: a RobustBench model read from ``--model-dir`` (RobustBench's
    loading code, ``weights_only`` unless ``--trust-checkpoints``); its key hashes the name
    and the checkpoint's sha256 (pinned by ``--expect-sha256``), the zoo's key of old, so
    existing zoo caches stay valid; records name it by its name; ``metrics`` are empty.
    Strong points inside a path are keyed by the path (the zoo's strong caches of old)."""

    strong_by_path = True

    @staticmethod
    def refs(cfg: ZooStageConfig) -> list[str]:
        """The models some pair uses, in ``--models`` order."""
        pairs = ZooSource.pairs(cfg)
        return [m for m in cfg.compare.models if any(m in p for p in pairs)]

    @staticmethod
    def pairs(cfg: ZooStageConfig) -> list[tuple]:
        return [tuple(p) for p in resolve_pairs(cfg.compare)[0]]

    @staticmethod
    def ident(ref: str) -> str:
        return ref

    @staticmethod
    def key(cfg: ZooStageConfig, ref: str) -> str:
        return endpoint(cfg, ref).key

    @staticmethod
    def load(cfg: ZooStageConfig, ref: str, run_dir: Path, data, device, progress: bool):
        ep = endpoint(cfg, ref)
        return ep.model(), {}, ep.key

    @staticmethod
    def files(cfg: ZooStageConfig, ref: str, run_dir: Path) -> list[Path]:
        return []  # in --model-dir, outside the run folder (a cluster must share it)
