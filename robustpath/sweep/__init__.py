"""Sweeps: a grid of benchmark cells from a TOML file, run in-process or as Ray tasks.

``python -m robustpath.sweep SWEEP.toml [--executor local|ray]``. Modules:
:mod:`~robustpath.sweep.spec` (sweep files, validation with file lines),
:mod:`~robustpath.sweep.plan` (the task graph, shared stages merged),
:mod:`~robustpath.sweep.nodes` (what one task runs),
:mod:`~robustpath.sweep.executors` / :mod:`~robustpath.sweep.ray_executor`,
:mod:`~robustpath.sweep.tracker` (results, cell folders, progress),
:mod:`~robustpath.sweep.driver` (the whole run). Ray is optional:
``pip install 'robustpath[ray]'``.
"""

from .driver import SweepResult, run_sweep
from .plan import Plan, build_plan
from .spec import Sweep, load_sweep

__all__ = ["Plan", "Sweep", "SweepResult", "build_plan", "load_sweep", "run_sweep"]
