"""One plan that every command runs (issue 26): the same tiny cell executed by
``robustpath.bench``, by a one-cell sweep (local executor; Ray in local mode in the slow
tier) and by ``robustpath.zoo compare`` on the bench's two endpoints presented as
RobustBench checkpoints gives identical records: ``records.csv`` byte for byte (the zoo's
after its model names are mapped back to the seeds) and every array of ``examples.npz``,
``strong_examples.npz``, ``plane.npz`` and ``curvature.csv``.

The cell: random CIFAR-10 images in torchvision's format (80 train, 24 test; the zoo
needs a RobustBench dataset), ``cnn-small``, seeds 0 and 1 (1 epoch), unaligned and
weight-aligned line and bezier paths, with the strong, curvature and plane stages. The
settings are typed once, as the shared flags (:func:`robustpath.config.flag_of`): both
commands take them with the same spelling and meaning. No network: the zoo reads the
endpoints from a local model folder (``ROBUSTPATH_OFFLINE=1``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustpath import bench, models
from robustpath.config import flag_of
from robustpath.sweep.__main__ import main as sweep_main
from robustpath.zoo import access
from robustpath.zoo.cli import main as zoo_main

#: the cell's settings (config fields), typed as the same flags for bench and zoo
SETTINGS = {"align": ["none", "weight"], "paths": ["line", "bezier"], "train_subset": 0,
            "test_subset": 0, "train_steps": 1, "eval_steps": 2, "t_points": 3,
            "refine_rounds": 1, "bn_batches": 1, "bn_inputs": "clean", "curve_epochs": 1,
            "curve_lr": 0.02, "bootstrap": 20, "plane_grid": 3, "curvature_examples": 2,
            "curvature_iters": 2, "strong_examples": 4, "aa_version": "custom",
            "aa_attacks": ["apgd-ce"], "strong_pgd_steps": 2, "strong_pgd_restarts": 1,
            "bn_endpoints": True}
NAMES = ("BenchSeed0_2099", "BenchSeed1_2099")
CELL = "cifar10-cnn-small-s0-1"


def _flags(settings: dict) -> list[str]:
    out = []
    for k, v in settings.items():
        if isinstance(v, bool):
            out.append(flag_of(k) if v else "--no-" + flag_of(k)[2:])
        else:
            out += [flag_of(k), ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return out


def _toml(folder: Path, root: Path) -> Path:
    lines = ['name = "one"', 'preset = "quick"', "[grid]", 'dataset = ["cifar10"]',
             'arch = ["cnn-small"]', "seed_pairs = [[0, 1]]",
             f"align = {SETTINGS['align']!r}", f"paths = {SETTINGS['paths']!r}", "[overrides]",
             f'data_root = "{root}"', "endpoint_epochs = 1"]
    lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
              for k, v in SETTINGS.items() if k not in ("align", "paths")]
    path = folder / "one.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


def _seeds(text: str) -> str:
    """The zoo's model names -> the bench's seed ids, in any file's text or array key."""
    a, b = NAMES
    return text.replace(f"{a}__{b}", "s0-1").replace(a, "0").replace(b, "1")


def _same_outputs(ref: Path, other: Path, rename=lambda s: s) -> None:
    assert rename((other / "records.csv").read_text()) == (ref / "records.csv").read_text()
    assert rename((other / "curvature.csv").read_text()) == (ref / "curvature.csv").read_text()
    for f in ("examples.npz", "strong_examples.npz", "plane.npz"):
        with np.load(ref / f) as za, np.load(other / f) as zb:
            keys = {rename(k): k for k in zb.files}
            assert sorted(za.files) == sorted(keys), f
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[keys[k]], err_msg=f"{f} {k}")


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """The cell run by bench: ``(base folder, data root, bench run folder)``."""
    from test_zoo import write_cifar10

    base = tmp_path_factory.mktemp("identity")
    root = write_cifar10(base / "data", per_batch=16, test=24)
    run = base / "bench"
    assert bench.main(["--dataset", "cifar10", "--arch", "cnn-small", "--seeds", "0,1",
                       "--epochs", "1", "--workers", "1", "--device", "cpu", "--no-progress",
                       "--data-root", str(root), "--out", str(run), *_flags(SETTINGS)]) == 0
    return base, root, run


def _zoo(base: Path, root: Path, run: Path, monkeypatch) -> Path:
    """The bench's endpoints as RobustBench checkpoints, compared by the zoo."""
    from robustpath.io.store import load_model

    monkeypatch.setenv("ROBUSTPATH_OFFLINE", "1")
    reg = access.registry("cifar10", "Linf")
    model_dir = base / "models"
    (model_dir / "cifar10" / "Linf").mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(NAMES):
        [ckpt] = (run / "ckpt" / "endpoints").glob(f"cnn-small-seed{seed}-*.safetensors")
        model, _ = load_model(ckpt.with_suffix(""))
        monkeypatch.setitem(reg, name, {"model": lambda: models.create("cnn-small", "cifar10"),
                                        "gdrive_id": "not-used"})
        torch.save(model.state_dict(), model_dir / "cifar10" / "Linf" / f"{name}.pt")
    out = base / "zoo"
    assert zoo_main(["compare", "--models", ",".join(NAMES), "--model-dir", str(model_dir),
                     "--no-transfer", "--device", "cpu", "--no-progress", "--data-root",
                     str(root), "--out", str(out), *_flags(SETTINGS)]) == 0
    return out


@pytest.mark.slow  # 30 s; the fast tier stays under 6 min on 2 cores
def test_one_cell_is_the_same_by_bench_sweep_and_zoo(cell, tmp_path, monkeypatch):
    base, root, run = cell
    sweep = tmp_path / "sweep"
    assert sweep_main([str(_toml(tmp_path, root)), "--out", str(sweep), "--no-progress"]) == 0
    _same_outputs(run, sweep / "cells" / CELL)
    zoo = _zoo(base, root, run, monkeypatch)
    _same_outputs(run, zoo, _seeds)
    # the zoo named its endpoints by model (the comparison above maps them back)
    assert f"{NAMES[0]},{NAMES[1]}" in (zoo / "records.csv").read_text()


@pytest.mark.slow  # 30 s with its bench cell; the zoo's strong and curvature stages in the
# fast tier: test_zoo.py::test_compare_cli_writes_everything_and_rerun_does_nothing
def test_zoo_runs_curvature_and_the_strong_stage(cell, monkeypatch):
    """A zoo comparison has every node type: --curvature and the strong stage write
    their files (and the plane stage its arrays) as in the bench."""
    base, root, run = cell
    zoo = base / "zoo"
    if not (zoo / "records.csv").is_file():  # run alone: make the comparison
        zoo = _zoo(base, root, run, monkeypatch)
    for f in ("curvature.csv", "curvature.md", "strong_examples.npz", "strong_eval.csv",
              "plane.npz"):
        assert (zoo / f).is_file(), f
    with np.load(zoo / "plane.npz") as z:
        assert {"none/robust_loss", "weight/robust_loss"} <= set(z.files)
    import pandas as pd

    curv, strong = pd.read_csv(zoo / "curvature.csv"), pd.read_csv(zoo / "strong_eval.csv")
    assert set(curv["endpoint_a"]) == set(strong["endpoint_a"]) == {NAMES[0]}
    assert len(strong) == 4 * 3  # 4 paths x (t = 0, t = 1, worst t)


@pytest.mark.slow
def test_a_one_cell_ray_sweep_is_the_same_cell(cell, tmp_path):
    ray = pytest.importorskip("ray")
    _, root, run = cell
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert sweep_main([str(_toml(tmp_path, root)), "--out", str(tmp_path / "s"),
                           "--executor", "ray", "--no-progress"]) == 0
    finally:
        ray.shutdown()
    _same_outputs(run, tmp_path / "s" / "cells" / CELL)


def test_a_fresh_process_resolves_the_zoo_source():
    """The engine imports no zoo module; a spawned worker or a Ray task that meets a
    ``zoo`` endpoint node gets the source from the registry's plugin table."""
    import subprocess
    import sys

    code = ("import sys\nfrom robustpath.engine.sources import SOURCES\n"
            "assert 'robustpath.zoo.source' not in sys.modules\n"
            "print(SOURCES.get('zoo').__module__, SOURCES.get('zoo').strong_by_path)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=False, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.split() == ["robustpath.zoo.source", "True"], r.stderr
