"""Endpoint sources: where a plan's endpoint nodes get their networks.

A source turns an endpoint reference (a seed for ``seed``) into a cache key
(:meth:`key`, known before anything runs, so every downstream node is named up front)
and a network (:meth:`load`: ``(model, metrics, key)``, trained or read as the source
needs). The plan (:mod:`robustpath.engine.plan`) names its endpoint nodes by the
source's key and the runners (:mod:`robustpath.engine.nodes`) load endpoints through
it, so alignment, curves, evaluation, strong, curvature and plane stages do not care
where an endpoint came from.

Registered: ``seed`` (adversarial training of a seed, :func:`robustpath.engine.stages.endpoint`)
and ``file`` (a user's checkpoint file, ``--endpoints A,B``,
:func:`robustpath.engine.stages.endpoint_from_file`). A source also says which endpoints a
configuration names (:meth:`refs`), how they pair (:meth:`pairs`) and the id records
carry for one (:meth:`ident`: the seed, or the file's stem), and whether the strong
stage keys a path's interior points by the path (:attr:`strong_by_path`).
:func:`for_config` picks the source of a configuration. To add one: a class with these
methods registered under a name in :data:`SOURCES`. A source defined in a package the
engine must not import (the library never imports the commands built on it) registers
itself when its module is imported and is named in :data:`PLUGINS`: ``zoo``
(:mod:`robustpath.zoo.source`, RobustBench models). ``SOURCES.get`` imports a plugin's
module on first use, so a spawned worker or a Ray task resolves it too.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from robustpath.config import BenchConfig
from robustpath.engine import keys, stages
from robustpath.io.store import config_hash
from robustpath.registry import Registry

#: sources registered by modules outside the engine: name -> the module that registers it
PLUGINS = {"zoo": "robustpath.zoo.source"}


class SourceRegistry(Registry):
    """:class:`robustpath.registry.Registry` that imports a :data:`PLUGINS` module the
    first time its source is asked for (by name: no import the layering forbids)."""

    def get(self, name: str):
        if name not in self and name in PLUGINS:
            importlib.import_module(PLUGINS[name])
        return super().get(name)

    def names(self) -> list[str]:
        return sorted({*super().names(), *PLUGINS})


SOURCES: Registry = SourceRegistry("endpoint source")


@SOURCES.register("seed")
class SeedSource:
    """Endpoint ``seed``: adversarially trained with the cell's settings (cached in
    ``ckpt/endpoints/``); ``metrics`` are its training metrics."""

    strong_by_path = False  # strong points keyed by their network (historical keys)

    @staticmethod
    def refs(cfg: BenchConfig) -> list:
        return list(dict.fromkeys(cfg.seeds))

    @staticmethod
    def pairs(cfg: BenchConfig) -> list[tuple]:
        return cfg.pairs()

    @staticmethod
    def ident(ref: int) -> int:
        return ref

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


@SOURCES.register("file")
class FileSource:
    """Endpoint ``path``: a user's file (``--endpoints A,B``; :mod:`robustpath.engine.endpoint_files`):
    a ``robustpath.train.loop`` checkpoint, or with ``--arch pkg.module:Factory`` a ``.pt`` /
    ``.safetensors`` state dict (never unpickled). Its key hashes the file's sha256 with
    the architecture; nothing is cached (the file is the cache); records name it by its
    stem. ``templates``: path -> in-memory module copied instead of calling the factory
    (``rp.benchmark``; in process only, so such runs use one worker)."""

    strong_by_path = False
    templates: dict[str, object] = {}

    @staticmethod
    def refs(cfg: BenchConfig) -> list:
        return list(cfg.endpoints)

    @staticmethod
    def pairs(cfg: BenchConfig) -> list[tuple]:
        return [tuple(cfg.endpoints)]

    @staticmethod
    def ident(ref: str) -> str:
        from robustpath.engine.endpoint_files import endpoint_id

        return endpoint_id(ref)

    @staticmethod
    def key(cfg: BenchConfig, ref: str) -> str:
        from robustpath.engine.endpoint_files import file_key

        return file_key(ref, cfg.arch)

    @staticmethod
    def load(cfg: BenchConfig, ref: str, run_dir: Path, data, device, progress: bool):
        return stages.endpoint_from_file(cfg, ref, device, data, FileSource.templates.get(ref))

    @staticmethod
    def files(cfg: BenchConfig, ref: str, run_dir: Path) -> list[Path]:
        return []  # outside the run folder: read where it is


def for_config(cfg) -> str:
    """The source of ``cfg``'s endpoints: ``file`` with ``--endpoints``, else ``seed``."""
    return "file" if getattr(cfg, "endpoints", None) else "seed"
