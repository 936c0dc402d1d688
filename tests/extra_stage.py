"""A path stage that exists only for tests (tests/test_path_stages.py): the L2 norm of
the curve's weights at t = 0.5, written as ``weight_norm.csv``. It is this module plus
one registration, nothing in the engine names it."""

from __future__ import annotations

from robustpath.engine.path_stages import PathStage, register, single
from robustpath.io.store import atomic_write_text

NAME = "weight-norm"


def _run(inp) -> dict:
    import torch

    with torch.no_grad():
        return {"norm": float(torch.linalg.vector_norm(inp.curve().flat_at(0.5).double()))}


def _write(run_dir, cfg, entries) -> None:
    lines = ["path_id,norm"] + [f"{pid},{v!r}" for pid, v in entries.items()]
    atomic_write_text(run_dir / "weight_norm.csv", "\n".join(lines) + "\n")


STAGE = register(PathStage(
    name=NAME, label="weight norm", seconds=0.1,
    applies=lambda info: info.kind == "bezier",
    parts=single(lambda info: {"weight_norm": info.curve_key, "t": 0.5}),
    run=_run, collect=lambda ref, res: res["main"]["norm"], write=_write))
