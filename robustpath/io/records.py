"""Per-t records of a run: ``records.csv`` (one row per path x t) and
``examples.npz`` (per-example correctness and loss, ``[T, N]`` per path).

These two files are the source of truth for tables and plots:
``python -m robustpath.report RUN`` rebuilds everything from them. Both are written
atomically; reading a truncated or corrupt file raises a one-line UserError.

This module is the one place that knows the schema. A path's endpoints are named by
id (columns ``endpoint_a``, ``endpoint_b``): a bench or sweep endpoint by its training
seed (an int, so ``path_id`` reads ``none-line-s0-1``), a zoo endpoint by its
RobustBench model name (a str; ``path_id`` ``none-line-<A>__<B>``). Folders written
before this schema name the columns ``seed_a`` / ``seed_b``; :func:`read_frame` renames
them on load (their values are kept: seeds, or in zoo folders of that time the indices
into ``models.json``), so old run folders still rebuild.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robustpath.errors import UserError
from robustpath.io.store import atomic_write_bytes, atomic_write_text
from robustpath.paths.evaluate import ARRAYS, PathResult

#: an endpoint's id: a trained seed (bench, sweep, soup) or a RobustBench model name (zoo)
EndpointId = int | str

ENDPOINTS = ["endpoint_a", "endpoint_b"]
#: the endpoint columns' names in folders written before endpoints were named by id
LEGACY_COLUMNS = {"seed_a": "endpoint_a", "seed_b": "endpoint_b"}
COLUMNS = ["path_id", "align", "curve", *ENDPOINTS, "t", "speed", "clean_acc",
           "clean_loss", "robust_acc", "robust_loss", "n"]
#: ``point``: ``grid`` or ``refine`` (a point added around the minimum by
#: :func:`robustpath.paths.evaluate.refine_minimum`); absent in runs made before refinement
OPTIONAL = ["point"]


def _is_seed(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def path_id(align: str, curve: str, endpoint_a: EndpointId, endpoint_b: EndpointId) -> str:
    """A path's id (a key of ``examples.npz``, part of file names such as
    ``cards/<path_id>-<role>.json``): ``{align}-{curve}-s{a}-{b}`` for two seeds (as
    written since the first runs), ``{align}-{curve}-{a}__{b}`` otherwise (model names
    may hold ``-``; ``__`` as in the zoo's ``pairs/<A>__<B>/`` folders)."""
    if _is_seed(endpoint_a) and _is_seed(endpoint_b):
        return f"{align}-{curve}-s{endpoint_a}-{endpoint_b}"
    return f"{align}-{curve}-{endpoint_a}__{endpoint_b}"


def identity(align: str, curve: str, endpoint_a: EndpointId, endpoint_b: EndpointId) -> dict:
    """A path's identity columns, as other tables carry them (``strong_eval.csv``,
    ``curvature.csv``, ``tables/per_path.csv``)."""
    return {"align": align, "curve": curve, "endpoint_a": endpoint_a, "endpoint_b": endpoint_b}


@dataclass
class PathRecord:
    """One evaluated path: identity (alignment method, curve family, the ids of its two
    endpoints: seeds or zoo model names, see the module docstring) + result."""

    align: str
    curve: str
    endpoint_a: EndpointId
    endpoint_b: EndpointId
    result: PathResult

    @property
    def path_id(self) -> str:
        return path_id(self.align, self.curve, self.endpoint_a, self.endpoint_b)

    @property
    def endpoints(self) -> tuple[EndpointId, EndpointId]:
        return self.endpoint_a, self.endpoint_b

    @property
    def identity(self) -> dict:
        """:func:`identity` of this path."""
        return identity(self.align, self.curve, self.endpoint_a, self.endpoint_b)


def to_frame(paths: list[PathRecord]) -> pd.DataFrame:
    rows = []
    for p in paths:
        per_t = p.result.per_t()
        refined = p.result.is_refined
        for i, t in enumerate(p.result.ts):
            rows.append({"path_id": p.path_id, "align": p.align, "curve": p.curve,
                         "endpoint_a": p.endpoint_a, "endpoint_b": p.endpoint_b,
                         "t": float(t),
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


def endpoint_ids(values: pd.Series) -> list[EndpointId]:
    """An endpoint column as ids: ints where the column is integer (seeds), else str."""
    if pd.api.types.is_integer_dtype(values):
        return [int(v) for v in values]
    return [str(v) for v in values]


def frame_path_ids(frame: pd.DataFrame) -> list[str]:
    """:func:`path_id` of every row of a records frame (from its identity columns)."""
    return [path_id(str(al), str(cu), a, b) for al, cu, a, b in zip(
        frame["align"], frame["curve"], endpoint_ids(frame["endpoint_a"]),
        endpoint_ids(frame["endpoint_b"]))]


def read_frame(run_dir: str | Path, *, complete: bool = True) -> pd.DataFrame:
    """``records.csv`` as a frame in the current schema: the legacy ``seed_a`` /
    ``seed_b`` columns renamed (:data:`LEGACY_COLUMNS`); a file that cannot be read,
    or lacks a column, or (``complete``) a value, raises a one-line UserError."""
    csv = Path(run_dir) / "records.csv"
    if not csv.is_file():
        raise UserError(f"{csv} not found (is {Path(run_dir)} a robustpath run folder?)")
    try:
        frame = pd.read_csv(csv)
    except Exception as e:
        raise UserError(f"{csv} is unreadable ({type(e).__name__})") from None
    old = {k: v for k, v in LEGACY_COLUMNS.items() if k in frame.columns}
    if old and not any(v in frame.columns for v in old.values()):
        frame = frame.rename(columns=old)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing or frame.empty or (complete and frame[COLUMNS].isna().any().any()):
        raise UserError(f"{csv} is corrupt or truncated (missing columns or values)")
    return frame


def read(run_dir: str | Path) -> list[PathRecord]:
    """Read a run's records (either schema, :func:`read_frame`); validates that the CSV
    and the per-example file agree."""
    run_dir = Path(run_dir)
    csv, npz = run_dir / "records.csv", run_dir / "examples.npz"
    for f in (csv, npz):
        if not f.is_file():
            raise UserError(f"{f} not found (is {run_dir} a robustpath run folder?)")
    frame = read_frame(run_dir)
    ends = dict(zip(frame.index, zip(endpoint_ids(frame["endpoint_a"]),
                                     endpoint_ids(frame["endpoint_b"]))))
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
        out.append(PathRecord(str(row["align"]), str(row["curve"]), *ends[grp.index[0]], res))
    return out
