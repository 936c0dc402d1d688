"""Endpoint sources: where a plan's endpoint nodes get their networks.

A source turns an endpoint reference (a seed for ``seed``) into a cache key
(:meth:`key`, known before anything runs, so every downstream node is named up front)
and a network (:meth:`load`: ``(model, metrics, key)``, trained or read as the source
needs). The plan (:mod:`robustpath.engine.plan`) names its endpoint nodes by the
source's key and the runners (:mod:`robustpath.engine.nodes`) load endpoints through
it, so alignment, curves, evaluation, strong, curvature and plane stages do not care
where an endpoint came from.

Registered: ``seed`` (adversarial training of a seed, :func:`robustpath.stages.endpoint`).
To add a source (a user's checkpoint files, the RobustBench zoo's
:class:`robustpath.zoo.plan.ZooEndpoint`): a class with ``key`` and ``load`` registered
here under a name, and the plan built with ``build_plan(cells, source=NAME)``.
"""

from __future__ import annotations

from pathlib import Path

from .. import keys, stages
from ..config import BenchConfig
from ..registry import Registry
from ..store import config_hash

SOURCES: Registry = Registry("endpoint source")


@SOURCES.register("seed")
class SeedSource:
    """Endpoint ``seed``: adversarially trained with the cell's settings (cached in
    ``ckpt/endpoints/``); ``metrics`` are its training metrics."""

    @staticmethod
    def key(cfg: BenchConfig, ref: int) -> str:
        return config_hash(keys.endpoint_config(cfg, ref).cache_key())

    @staticmethod
    def load(cfg: BenchConfig, ref: int, run_dir: Path, data, device, progress: bool):
        return stages.endpoint(cfg, ref, run_dir, data, device, progress)

    @staticmethod
    def files(cfg: BenchConfig, ref: int, run_dir: Path) -> list[Path]:
        """The stored output (what a task on another machine must see)."""
        return sorted(Path(run_dir).glob(f"ckpt/endpoints/*{SeedSource.key(cfg, ref)}.json"))
