"""Which pairs of zoo models a comparison joins."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from robustpath.errors import UserError
from robustpath.io.store import config_hash
from robustpath.zoo import access
from robustpath.zoo.access import check_pair, check_sha256, checkpoint_path, describe
from robustpath.zoo.config import CompareConfig


def resolve_pairs(cfg: CompareConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(pairs, skipped)``: the pairs to compare, and the different-architecture pairs of
    ``models`` left out. Explicit ``cfg.pairs`` and a two-model list must match."""
    entries = {m: describe(m, cfg.dataset, cfg.threat) for m in cfg.models}
    if cfg.pairs is not None:
        for a, b in cfg.pairs:
            for m in (a, b):
                if m not in entries:
                    raise UserError(f"--pairs names {m!r}, which is not in --models")
            if a == b:
                raise UserError(f"--pairs joins {a} with itself")
            check_pair(entries[a], entries[b])
        return [tuple(p) for p in cfg.pairs], []
    if len(cfg.models) == 2:
        check_pair(entries[cfg.models[0]], entries[cfg.models[1]])
    pairs, skipped = [], []
    for i, a in enumerate(cfg.models):
        for b in cfg.models[i + 1:]:
            try:
                check_pair(entries[a], entries[b])
                pairs.append((a, b))
            except UserError:
                skipped.append((a, b))
    if not pairs:
        raise UserError("no two of --models share an architecture "
                        "(see python -m robustpath.zoo list)")
    return pairs, skipped




class ZooEndpoint:
    """An endpoint loaded from RobustBench, beside the bench's trained seeds
    (:func:`robustpath.engine.stages.endpoint`): ``id`` is its zoo name, ``key`` the hash of
    the name and its checkpoint file's sha256 (pinned by ``--expect-sha256``), so
    every downstream stage key changes when the file does. Loaded on first use."""

    def __init__(self, name: str, cfg: CompareConfig):
        self.id, self.cfg = name, cfg
        self._model: nn.Module | None = None
        self._key: str | None = None
        self.sha256: str | None = None

    @property
    def path(self) -> Path:
        return checkpoint_path(self.cfg.model_dir, self.cfg.dataset, self.cfg.threat, self.id)

    def ensure_file(self) -> None:
        """Fail (or download, through loading) before any work when the file is missing or
        is not a checkpoint (an HTML page, a truncated archive: :func:`sniff_checkpoint`)."""
        if not self.path.is_file():
            self.model()
        access.sniff_checkpoint(self.path)

    @property
    def key(self) -> str:
        if self._key is None:
            self.sha256 = check_sha256(self.path, self.cfg.expect_sha256.get(self.id))
            self._key = config_hash({"name": self.id, "sha256": self.sha256})
        return self._key

    def model(self) -> nn.Module:
        if self._model is None:  # through the module: tests patch access.load
            self._model = access.load(self.id, self.cfg.model_dir, self.cfg.dataset,
                                      self.cfg.threat,
                                      trust_checkpoint=self.cfg.trust_checkpoints).eval()
        return self._model
