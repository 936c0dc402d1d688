"""The settings of ``python -m robustpath.soup`` (:class:`SoupConfig`): the bench's
configuration (:class:`robustpath.config.BenchConfig`, the shared groups of
:mod:`robustpath.config` plus endpoint training) with the soup's own fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from robustpath.align import methods
from robustpath.config import BenchConfig, flag_of
from robustpath.errors import UserError

MAX_GRID = 64  # the triangle has (K + 1)(K + 2) / 2 points: 2,145 at K = 64


@dataclass
class SoupConfig(BenchConfig):
    """A soup run: N >= 3 endpoints (``seeds``, trained with the bench's recipe and cache,
    or the user's ``endpoints`` files; ``models`` = N) merged into one basin by each method
    of ``align`` (merge methods, :data:`robustpath.soup.merge.MERGERS`; the unaligned
    models, ``none``, are always measured too), then measured on the uniform soup, the
    triangle of endpoints 0, 1, 2 on the barycentric grid of step 1 / ``grid`` and the line
    between every pair at t step 1 / ``grid``; ``merge_seed``: MergeMany's visiting
    order. Every network is measured as a path point is (``bn_batches``, ``bn_inputs``,
    ``renorm``, the evaluation attack); the bench's curve, plane and strong settings are
    not used."""

    ALIGN_CHOICES = methods.ONE_SHOT  # the merge methods (N-model versions of the matchers)

    models: int = 3
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    grid: int = 8
    merge_seed: int = 0
    align: list[str] = field(default_factory=lambda: ["weight"])
    strong: bool = False         # the soup runs no strong stage
    out: str = "runs/soup"

    def check_endpoint_count(self) -> None:
        n = len(self.endpoints or self.seeds)
        if n < 3:
            raise UserError(f"--models must be >= 3 (or three --seeds / --endpoints; two "
                            f"models: python -m robustpath.bench), got {n}")
        if self.models != n:
            raise UserError(f"--models {self.models} but {n} endpoints "
                            f"({'--endpoints' if self.endpoints else '--seeds'})")

    def validate(self) -> SoupConfig:
        from robustpath.soup.merge import MERGERS

        for m in self.align or [""]:
            MERGERS.get(m)  # "unknown merge method", listing them
        if not 1 <= self.grid <= MAX_GRID:
            raise UserError(f"--grid must be in 1..{MAX_GRID} (points: (K+1)(K+2)/2), "
                            f"got {self.grid}")
        if not str(self.out).strip():  # Path("") is the current folder: outputs land there
            raise UserError("--out must name a folder, got an empty string")
        from robustpath.train.loop import check_seed

        check_seed(self.merge_seed, flag_of("merge_seed"))  # before training, not when merging
        super().validate()
        return self

    def methods(self) -> list[str]:
        """``none`` first (the baseline), then each method of ``align``."""
        return list(dict.fromkeys(["none", *self.align]))
