"""Sweep files: a TOML grid of benchmark cells, validated with the file line in errors.

A sweep file (see ``sweeps/quick.toml``)::

    name = "quick"                 # default sweep folder: runs/<name>
    description = "..."            # free text
    preset = "quick"               # robustpath.config.PRESETS; every cell starts from it

    [grid]                         # axes: one cell per combination x seed pair
    dataset = ["fashion-mnist"]
    arch = ["cnn-small", "mlp"]
    seed_pairs = [[0, 1], [0, 2]]  # or: seeds = [0, 1, 2, 3] -> (0,1), (2,3)
    eps = ["8/255"]                # any BenchConfig field may be an axis
    threat_model = ["Linf", "L2"]  # = norm; steps = eval_steps (the flags' names)
    align = ["none", "activation"] # align and paths are not axes: every cell
    paths = ["line", "bezier"]     # evaluates all of them (rows of its table)

    [overrides]                    # scalar BenchConfig fields, the same for every cell
    train_subset = 2000

    [resources]                    # per task: Ray resource requests; threads in both executors
    cpus = 1                       # CPUs per task = its torch threads (local executor too)
    gpus = 1                       # GPUs per task, requested only when the cluster has GPUs
    retries = 2                    # retries of a failed task
    [resources.eval]               # per stage (endpoint, align, curve, eval, plane)
    cpus = 2

A cell is one :class:`robustpath.config.BenchConfig` with one seed pair, built by
:func:`robustpath.config.from_preset` (preset, then overrides, then the cell's axis
values). Errors are :class:`robustpath.errors.UserError` lines of the form
``FILE:LINE: grid.arch: unknown model 'x' (known: ...)``.
"""

from __future__ import annotations

import argparse
import itertools
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from robustpath.config import PRESETS, BenchConfig, from_preset
from robustpath.errors import UserError

# per-task requests beyond any one machine (cpus = 1e9 would become 1e9 torch threads)
MAX_TASK_CPUS, MAX_TASK_GPUS = 1024, 64
CORE_STAGES = ("endpoint", "align", "curve", "eval")


def stage_names() -> tuple[str, ...]:
    """Stages a ``[resources.<stage>]`` table may name: the core ones and every path
    stage (:mod:`robustpath.engine.path_stages`: strong, curvature, plane)."""
    from robustpath.engine.path_stages import stages

    return (*CORE_STAGES, *(s.name for s in stages()))
TOP_KEYS = {"name": str, "description": str, "preset": str, "grid": dict, "overrides": dict,
            "resources": dict}
RESOURCE_KEYS = {"cpus": (int, float), "gpus": (int, float), "retries": int}
# fields that are not settings of a cell: where it is written, which seeds, which preset
NOT_SETTINGS = {"out", "seeds", "preset"}
LIST_FIELDS = {"align", "paths", "aa_attacks"}  # lists inside one cell, not axes
FRACTION_FIELDS = {"eps", "step_size"}     # "8/255" strings allowed
SCALAR_ONLY = {"data_root", "device"}      # where/how, never an axis
#: the command-line vocabulary's names of settings (``--threat-model``, ``--steps``) as
#: sweep-file keys: the same setting as the config field
ALIASES = {"threat_model": "norm", "steps": "eval_steps"}


def _unalias(loc: _Locator, table: str, values: dict) -> dict:
    out = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name in out:
            raise loc.error((table, key), f"is also set as {name}; set it in one place")
        out[name] = value
    return out


# ---------------------------------------------------------------- file lines of keys
def _strip_strings(line: str) -> str:
    """The line without quoted strings and comments (for bracket counting)."""
    line = re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', '""', line)
    return line.split("#", 1)[0]


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path (``("grid", "arch")``) and table (``("grid",)``) to its 1-based
    line. Handles multi-line arrays; enough of TOML for sweep files, not a parser."""
    out: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    depth = 0
    for i, raw in enumerate(text.splitlines(), 1):
        line = _strip_strings(raw).strip()
        if depth > 0:  # inside a multi-line value
            depth += line.count("[") + line.count("{") - line.count("]") - line.count("}")
            continue
        if not line:
            continue
        head = re.match(r"^\[\[?\s*([^\[\]]+?)\s*\]\]?$", raw.split("#", 1)[0].strip())
        if head:
            table = tuple(p.strip().strip("\"'") for p in head.group(1).split("."))
            out.setdefault(table, i)
            continue
        m = re.match(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*)\s*=""",
                     raw)
        if m:
            key = tuple(p.strip().strip("\"'") for p in m.group(1).split("."))
            out.setdefault(table + key, i)
            value = _strip_strings(raw[m.end():])
            depth = value.count("[") + value.count("{") - value.count("]") - value.count("}")
    return out


class _Locator:
    """Turns (key path, message) into a UserError naming the file, line and key."""

    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, key_lines(text)

    def line(self, keys: tuple[str, ...]) -> int | None:
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.lines:
                return self.lines[keys[:n]]
        return None

    def error(self, keys: tuple[str, ...], message: str) -> UserError:
        line = self.line(keys)
        where = f"{self.path}:{line}" if line else str(self.path)
        return UserError(f"{where}: {'.'.join(keys)}: {message}")


# ---------------------------------------------------------------- data classes
@dataclass
class Resources:
    """Ray resource requests. ``gpus`` apply only when the cluster has GPUs; otherwise a
    task asks for ``cpus`` CPUs alone. ``stages`` overrides per stage name."""

    cpus: float = 1
    gpus: float = 1
    retries: int = 2
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_stage(self, stage: str, cluster_has_gpus: bool) -> dict[str, float]:
        """``{"num_cpus": c, "num_gpus": g}`` for a task of ``stage``."""
        own = self.stages.get(stage, {})
        cpus = float(own.get("cpus", self.cpus))
        gpus = float(own.get("gpus", self.gpus)) if cluster_has_gpus else 0.0
        return {"num_cpus": cpus, "num_gpus": gpus}

    def threads(self, stage: str) -> int:
        """torch threads of a task of ``stage``: its CPUs, at least 1. Both executors use
        it, since results depend on the thread count (float reduction order)."""
        return max(1, int(self.for_stage(stage, False)["num_cpus"]))


@dataclass
class Cell:
    """One grid cell: a benchmark configuration with a single seed pair.

    ``name`` is also its folder under ``<sweep>/cells/``; ``group`` is the name without
    the seed pair (cells of one group are averaged over seed pairs); ``axes`` holds the
    values of the group's axes as written in the sweep file."""

    name: str
    group: str
    axes: dict[str, Any]
    cfg: BenchConfig

    @property
    def pair(self) -> tuple[int, int]:
        return self.cfg.seeds[0], self.cfg.seeds[1]


@dataclass
class Sweep:
    """A validated sweep file: its cells (in grid order) and resource requests."""

    name: str
    description: str
    path: Path
    text: str
    preset: str
    axes: list[str]          # grid axes that name groups, in file order (dataset, arch first)
    cells: list[Cell]
    resources: Resources

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": str(self.path),
                "preset": self.preset, "axes": self.axes,
                "resources": {"cpus": self.resources.cpus, "gpus": self.resources.gpus,
                              "retries": self.resources.retries,
                              "stages": self.resources.stages},
                "cells": [{"name": c.name, "group": c.group, "axes": c.axes,
                           "seeds": list(c.pair), "dir": f"cells/{c.name}"} for c in self.cells]}


# ---------------------------------------------------------------- validation
_FIELD_TYPES = {f.name: str(f.type) for f in fields(BenchConfig)}


def _type_error(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be BenchConfig field ``name``, or None when it can."""
    kind = _FIELD_TYPES[name]
    if name in LIST_FIELDS:
        ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        return None if ok else "must be a non-empty list of strings"
    if isinstance(value, (list, dict)):
        return f"must be a single value, got {type(value).__name__}"
    if name in FRACTION_FIELDS:
        ok = isinstance(value, (int, float, str)) and not isinstance(value, bool)
        return None if ok else "must be a number or a fraction string like \"8/255\""
    if kind.startswith("bool"):
        return None if isinstance(value, bool) else "must be true or false"
    if kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {value!r}"
    if kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {value!r}"
    if kind.startswith("str"):
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    return None


def _try_config(loc: _Locator, keys: tuple[str, ...], preset: str, **settings) -> BenchConfig:
    try:
        return from_preset(preset, **settings)
    except UserError as e:
        raise loc.error(keys, str(e)) from None
    except (TypeError, ValueError) as e:
        raise loc.error(keys, f"invalid value ({e})") from None


def _slug(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _seed_pairs(loc: _Locator, grid: dict) -> list[tuple[int, int]]:
    if ("seeds" in grid) == ("seed_pairs" in grid):
        raise loc.error(("grid",), "give exactly one of seed_pairs = [[a, b], ...] or "
                        "seeds = [a, b, c, d, ...]")
    if "seed_pairs" in grid:
        raw, keys = grid["seed_pairs"], ("grid", "seed_pairs")
        if not isinstance(raw, list) or not raw or not all(
                isinstance(p, list) and len(p) == 2 and all(
                    isinstance(s, int) and not isinstance(s, bool) for s in p) for p in raw):
            raise loc.error(keys, "must be a non-empty list of integer pairs, e.g. [[0, 1], [2, 3]]")
        pairs = [(p[0], p[1]) for p in raw]
    else:
        raw, keys = grid["seeds"], ("grid", "seeds")
        if not isinstance(raw, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in raw):
            raise loc.error(keys, "must be a list of integers")
        if len(raw) < 2 or len(raw) % 2:
            raise loc.error(keys, f"needs an even number of seeds (paired consecutively), got {raw}")
        pairs = [(raw[i], raw[i + 1]) for i in range(0, len(raw), 2)]
    for a, b in pairs:
        if a == b or a < 0 or b < 0:
            raise loc.error(keys, f"seed pair ({a}, {b}) needs two distinct non-negative seeds")
    if len({frozenset(p) for p in pairs}) != len(pairs):  # (1, 0) trains the nets of (0, 1)
        raise loc.error(keys, "a seed pair is listed twice (a mirrored pair like [1, 0] after "
                        "[0, 1] is the same two networks)")
    return pairs


def _check_table(loc: _Locator, keys: tuple[str, ...], value: Any) -> dict:
    if not isinstance(value, dict):
        raise loc.error(keys, "must be a table")
    return value


def _resources(loc: _Locator, raw: dict) -> Resources:
    res = Resources()
    for key, value in raw.items():
        keys = ("resources", key)
        if key in stage_names():
            table = _check_table(loc, keys, value)
            for k, v in table.items():
                if k not in ("cpus", "gpus"):
                    raise loc.error(keys + (k,), "unknown key (known: cpus, gpus)")
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                    raise loc.error(keys + (k,), "must be a number >= 0")
            res.stages[key] = dict(table)
        elif key in RESOURCE_KEYS:
            if not isinstance(value, RESOURCE_KEYS[key]) or isinstance(value, bool) or value < 0:
                raise loc.error(keys, "must be a number >= 0" if key != "retries"
                                else "must be an integer >= 0")
            setattr(res, key, value)
        else:
            known = ", ".join([*RESOURCE_KEYS, *stage_names()])
            raise loc.error(keys, f"unknown key (known: {known})")
    if res.cpus <= 0 or any(float(s.get("cpus", 1)) <= 0 for s in res.stages.values()):
        raise loc.error(("resources", "cpus"), "a task needs cpus > 0")
    for key, limit in (("cpus", MAX_TASK_CPUS), ("gpus", MAX_TASK_GPUS)):
        for where, table in ((("resources", key), vars(res)),
                             *((("resources", st, key), t) for st, t in res.stages.items())):
            if float(table.get(key, 0)) > limit:
                raise loc.error(where, f"must be <= {limit} per task, got {table[key]}")
    return res


def load_sweep(path: str | Path, *, results_root: str | Path = "results") -> Sweep:
    """Read and validate a sweep file; cells' ``out`` is ``<results_root>/<name>/cells/<cell>``
    (set again by the driver when ``--out`` is given)."""
    import tomllib

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"sweep file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"sweep file {path} is unreadable ({e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise UserError(f"{path}:{m.group(1) if m else '?'}: invalid TOML: {e}") from None
    loc = _Locator(path, text)

    for key, value in raw.items():
        if key not in TOP_KEYS:
            raise loc.error((key,), f"unknown key (known: {', '.join(TOP_KEYS)})")
        if not isinstance(value, TOP_KEYS[key]):
            kind = "a table" if TOP_KEYS[key] is dict else "a string"
            raise loc.error((key,), f"must be {kind}")
    if "grid" not in raw:
        raise UserError(f"{path}: grid: missing [grid] table (the axes of the sweep)")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name) \
            or set(name) == {"."}:  # "." / "..": the results root itself or its parent
        raise loc.error(("name",), f"must be a folder name (letters, digits, . _ -; not . or "
                        f"..), got {name!r}")
    preset = raw.get("preset", "quick")
    try:
        PRESETS.get(preset)
    except UserError as e:
        raise loc.error(("preset",), str(e)) from None

    settable = set(_FIELD_TYPES) - NOT_SETTINGS
    overrides = _unalias(loc, "overrides", dict(raw.get("overrides", {})))
    for key, value in overrides.items():
        if key not in settable:
            raise loc.error(("overrides", key),
                            f"unknown setting (known: {', '.join(sorted(settable))})")
        why = _type_error(key, value)
        if why:
            raise loc.error(("overrides", key), why)
        if key == "data_root":  # as --data-root: an existing folder, relative to the cwd
            from robustpath.cli import data_root

            try:
                data_root(str(value))
            except argparse.ArgumentTypeError as e:
                raise loc.error(("overrides", key), str(e).replace(
                    "--data-root unset", "data_root unset")) from None
        if key not in ("aa_version", "aa_attacks"):  # valid only together: checked below
            _try_config(loc, ("overrides", key), preset, **{key: value})
    _try_config(loc, ("overrides",), preset, **overrides)

    grid = _unalias(loc, "grid", dict(raw["grid"]))
    pairs = _seed_pairs(loc, grid)
    axes: dict[str, list] = {}
    inner: dict[str, list[str]] = {}
    for key, value in grid.items():
        keys = ("grid", key)
        if key in ("seeds", "seed_pairs"):
            continue
        if key not in settable:
            raise loc.error(keys, "unknown axis (known: seeds, seed_pairs, "
                            f"{', '.join(sorted(settable - SCALAR_ONLY))})")
        if key in SCALAR_ONLY:
            raise loc.error(keys, "is not an axis; set it in [overrides]")
        if key in overrides:
            raise loc.error(keys, "is also set in [overrides]; set it in one place")
        if key in LIST_FIELDS:
            why = _type_error(key, value)
            if why:
                raise loc.error(keys, why)
            inner[key] = list(value)
            _try_config(loc, keys, preset, **overrides, **{key: value})
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            raise loc.error(keys, "an axis needs at least one value")
        for v in values:
            why = _type_error(key, v)
            if why:
                raise loc.error(keys, why)
            _try_config(loc, keys, preset, **overrides, **{key: v})
        if len({repr(v) for v in values}) != len(values):
            raise loc.error(keys, "a value is listed twice")
        axes[key] = values

    # dataset and arch always name a cell; other axes only when they vary
    for key in ("dataset", "arch"):
        if key not in axes:
            base = _try_config(loc, ("grid",), preset, **overrides)
            axes = {key: [getattr(base, key)], **axes}
    order = ["dataset", "arch"] + [k for k in axes if k not in ("dataset", "arch")]
    named = ["dataset", "arch"] + [k for k in order[2:] if len(axes[k]) > 1]

    root = Path(results_root) / name
    cells, seen = [], {}
    for combo in itertools.product(*(axes[k] for k in order)):
        values = dict(zip(order, combo))
        group = "-".join(_slug(values["dataset"]) if k == "dataset" else
                         _slug(values["arch"]) if k == "arch" else f"{k}-{_slug(values[k])}"
                         for k in named)
        for a, b in pairs:
            cell_name = f"{group}-s{a}-{b}"
            cfg = _try_config(loc, ("grid",), preset, **overrides, **values, **inner,
                              seeds=[a, b], out=str(root / "cells" / cell_name))
            if cell_name in seen:
                raise loc.error(("grid",), f"two cells would share the folder {cell_name!r}")
            seen[cell_name] = True
            cells.append(Cell(cell_name, group, {k: values[k] for k in named}, cfg))
    resources = _resources(loc, _check_table(loc, ("resources",), raw.get("resources", {})))
    return Sweep(name=name, description=raw.get("description", ""), path=path, text=text,
                 preset=preset, axes=named, cells=cells, resources=resources)
