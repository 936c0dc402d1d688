"""Per-t records of a run: ``records.csv`` (one row per path x t) and
``examples.npz`` (per-example correctness and loss, ``[T, N]`` per path).

These two files are the source of truth for tables and plots:
``python -m robustpath.report RUN`` rebuilds everything from them. Both are written
atomically; reading a truncated or corrupt file raises a one-line UserError.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .evaluate import ARRAYS, PathResult
from .store import atomic_write_bytes, atomic_write_text

COLUMNS = ["path_id", "align", "curve", "seed_a", "seed_b", "t", "speed", "clean_acc",
           "clean_loss", "robust_acc", "robust_loss", "n"]
#: ``point``: ``grid`` or ``refine`` (a point added around the minimum by
#: :func:`robustpath.evaluate.refine_minimum`); absent in runs made before refinement
OPTIONAL = ["point"]


@dataclass
class PathRecord:
    """One evaluated path: identity (alignment method, curve family, seed pair) + result."""

    align: str
    curve: str
    seed_a: int
    seed_b: int
    result: PathResult

    @property
    def path_id(self) -> str:
        return f"{self.align}-{self.curve}-s{self.seed_a}-{self.seed_b}"


def to_frame(paths: list[PathRecord]) -> pd.DataFrame:
    rows = []
    for p in paths:
        per_t = p.result.per_t()
        refined = p.result.is_refined
        for i, t in enumerate(p.result.ts):
            rows.append({"path_id": p.path_id, "align": p.align, "curve": p.curve,
                         "seed_a": p.seed_a, "seed_b": p.seed_b, "t": float(t),
                         "speed": float(p.result.speed[i]),
                         "clean_acc": per_t["clean_acc"][i], "clean_loss": per_t["clean_loss"][i],
                         "robust_acc": per_t["robust_acc"][i],
                         "robust_loss": per_t["robust_loss"][i],
                         "n": int(p.result.clean_correct.shape[1]),
                         "point": "refine" if refined[i] else "grid"})
    return pd.DataFrame(rows, columns=COLUMNS + OPTIONAL)


def write(run_dir: str | Path, paths: list[PathRecord]) -> None:
    """Write ``records.csv`` and ``examples.npz`` into ``run_dir`` (atomically)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "records.csv", to_frame(paths).to_csv(index=False, float_format="%.6f"))
    arrays = {}
    for p in paths:
        for k, v in p.result.to_arrays().items():
            if k.endswith("_correct"):
                v = v.astype(np.bool_)
            elif k.endswith("_loss"):
                v = v.astype(np.float32)
            arrays[f"{p.path_id}/{k}"] = v
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(run_dir / "examples.npz", buf.getvalue())


def read(run_dir: str | Path) -> list[PathRecord]:
    """Read a run's records; validates that the CSV and the per-example file agree."""
    run_dir = Path(run_dir)
    csv, npz = run_dir / "records.csv", run_dir / "examples.npz"
    for f in (csv, npz):
        if not f.is_file():
            raise UserError(f"{f} not found (is {run_dir} a robustpath run folder?)")
    try:
        frame = pd.read_csv(csv)
    except Exception as e:
        raise UserError(f"{csv} is unreadable ({type(e).__name__})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing or frame[COLUMNS].isna().any().any() or frame.empty:
        raise UserError(f"{csv} is corrupt or truncated (missing columns or values)")
    try:
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{npz} is corrupt or truncated ({type(e).__name__})") from None
    out = []
    for pid, grp in frame.groupby("path_id", sort=False):
        try:
            res = PathResult.from_arrays({k: arrays[f"{pid}/{k}"] for k in
                                          ("ts", "speed", *ARRAYS, "refined")
                                          if k != "refined" or f"{pid}/refined" in arrays})
        except KeyError:
            raise UserError(f"{npz} has no per-example data for path {pid}") from None
        if len(res.ts) != len(grp) or not np.allclose(res.ts, grp["t"].to_numpy(), atol=1e-6):
            raise UserError(f"{csv} and {npz} disagree on the t grid of path {pid}")
        per_t = res.per_t()
        if not np.allclose(per_t["robust_acc"], grp["robust_acc"].to_numpy(), atol=1e-5):
            raise UserError(f"{csv} and {npz} disagree on path {pid} (corrupt file?)")
        row = grp.iloc[0]
        out.append(PathRecord(str(row["align"]), str(row["curve"]), int(row["seed_a"]),
                              int(row["seed_b"]), res))
    return out
