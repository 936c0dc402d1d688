"""Sweeps: a grid of benchmark cells from a TOML file, run in-process or as Ray tasks.

``python -m robustpath.sweep SWEEP.toml [--executor local|ray]``. Modules:
:mod:`~robustpath.sweep.spec` (sweep files, validation with file lines),
the plan, its nodes and the executors are :mod:`robustpath.engine` (the same as
``robustpath.bench`` runs),
:mod:`~robustpath.sweep.tracker` (results, cell folders, progress),
:mod:`~robustpath.sweep.driver` (the whole run). Ray is optional:
``pip install 'robustpath[ray]'``.
"""

from robustpath.sweep.driver import SweepResult, run_sweep
from robustpath.sweep.spec import Sweep, load_sweep

__all__ = ["Sweep", "SweepResult", "load_sweep", "run_sweep"]
