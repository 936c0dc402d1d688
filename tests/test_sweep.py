"""Sweeps: sweep-file validation, the task graph, the local executor as the reference,
the Ray executor on a local Ray instance (same records, shared endpoint trained once,
a failing task retried, a task failing for good reported with its cell), reruns that
do no work, and the report across cells.

The tiny grid: Fashion-MNIST, ``mlp``, seed pairs (0, 1) and (0, 2) - two cells
sharing endpoint seed 0 - unaligned and weight-aligned, line and bezier paths.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustpath.engine import nodes as sweep_nodes
from robustpath.engine import stages
from robustpath.engine.plan import build_plan
from robustpath.paths import fit as curve_train
from robustpath.report.cli import main as report_main
from robustpath.sweep import load_sweep
from robustpath.sweep.__main__ import main as sweep_main

ROOT = Path(__file__).resolve().parent.parent
THREADS = torch.get_num_threads()
CELLS = ("fashion-mnist-mlp-s0-1", "fashion-mnist-mlp-s0-2")
TINY = """\
name = "tiny"
preset = "quick"

[grid]
dataset = ["fashion-mnist"]
arch = ["mlp"]
seed_pairs = [[0, 1], [0, 2]]
align = ["none", "weight"]
paths = ["line", "bezier"]

[overrides]
train_subset = 500
test_subset = 100
endpoint_epochs = 1
curve_epochs = 1
t_points = 3
train_steps = 1
eval_steps = 2
bn_batches = 1
bootstrap = 20
plane_grid = 0
strong_examples = 8
aa_version = "custom"
aa_attacks = ["apgd-ce"]
strong_pgd_steps = 2
strong_pgd_restarts = 1
refine_rounds = 0

[resources]
retries = 1
"""


@pytest.fixture(scope="module")
def tiny_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweepfile") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def local_run(tiny_toml, tmp_path_factory):
    """The tiny sweep with the local executor; counts endpoint trainings in-process."""
    out = tmp_path_factory.mktemp("local") / "tiny"
    trained = []
    real = stages.train_endpoint
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "train_endpoint",
                   lambda tc, *a, **k: (trained.append(tc.seed), real(tc, *a, **k))[1])
        assert sweep_main([str(tiny_toml), "--out", str(out), "--no-progress"]) == 0
    return out, trained


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_run(tiny_toml, tmp_path_factory, ray_session):
    """The tiny sweep on Ray, with the first curve task made to fail once."""
    base = tmp_path_factory.mktemp("ray")
    out, marker = base / "tiny", base / "fault-fired"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sweep_nodes.FAULT_ENV, f"curve:{marker}")
        assert sweep_main([str(tiny_toml), "--out", str(out), "--executor", "ray",
                           "--no-progress"]) == 0
    return out, marker


def _tasks(out: Path) -> list[dict]:
    return json.loads((out / "tasks.json").read_text())["tasks"]


def _mtimes(folder: Path) -> dict[str, int]:
    """Modification times of the stage cache and the cell folders."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for sub in ("ckpt", "cells") for p in (folder / sub).rglob("*") if p.is_file()}


# ---------------------------------------------------------------- plan and files
def test_plan_merges_the_shared_endpoint(tiny_toml):
    sweep = load_sweep(tiny_toml)
    assert [c.name for c in sweep.cells] == list(CELLS)
    plan = build_plan(sweep.cells)
    counts = plan.counts()
    # strong: a transfer source per endpoint (seed 0's shared), t = 0 and t = 1 per pair,
    # each path's own points
    assert counts == {"endpoint": 3, "align": 4, "curve": 8, "eval": 8,
                      "strong": 3 + 2 + 2 + 8}
    seed0 = [n for n in plan.nodes.values() if n.stage == "endpoint" and n.params["seed"] == 0]
    assert len(seed0) == 1 and seed0[0].cells == list(CELLS)
    # every node comes after its inputs
    seen = set()
    for nid, node in plan.nodes.items():
        assert set(node.deps) <= seen
        seen.add(nid)


def test_shipped_sweeps_validate():
    quick = load_sweep(ROOT / "sweeps" / "quick.toml")
    assert {c.cfg.arch for c in quick.cells} == {"cnn-small", "mlp"}
    assert {c.pair for c in quick.cells} == {(0, 1), (2, 3)}
    assert all(c.cfg.dataset == "fashion-mnist" for c in quick.cells)
    paper = load_sweep(ROOT / "sweeps" / "paper.toml")
    assert len(paper.cells) == 12
    assert {(c.cfg.dataset, c.cfg.arch) for c in paper.cells} == {
        (d, a) for d in ("cifar10", "cifar100") for a in ("tinyten", "resnet32")}
    assert {c.pair for c in paper.cells} == {(1, 2), (3, 4), (5, 6)}
    for c in paper.cells:
        cfg = c.cfg
        assert cfg.preset == "paper" and cfg.attack == "pgd" and cfg.norm == "linf"
        assert cfg.eps == pytest.approx(8 / 255) and cfg.step_size == pytest.approx(2 / 255)
        assert cfg.train_steps == 5 and cfg.eval_steps == 5 and cfg.t_points == 65
        assert cfg.align == ["none", "activation"] and cfg.paths == ["bezier"]


BAD = [
    # (file text, line, key)
    ('name = "x"\ncolour = 1\n[grid]\nseeds = [0, 1]\n', 2, "colour"),
    ('[grid]\nseeds = [0, 1]\nfoo = [1, 2]\n', 3, "grid.foo"),
    ('[grid]\nseeds = [0, 1]\narch = [\n  "mlp",\n  "nope",\n]\n', 3, "grid.arch"),
    ('[grid]\nseeds = [0, 1, 2]\n', 2, "grid.seeds"),
    ('[grid]\nseed_pairs = [[0, 0]]\n', 2, "grid.seed_pairs"),
    ('[grid]\nseeds = [0, 1]\n\n[overrides]\ntrain_subset = "many"\n', 5, "overrides.train_subset"),
    ('[grid]\nseeds = [0, 1]\n[overrides]\neps = "8/0"\n', 4, "overrides.eps"),
    ('preset = "fast"\n[grid]\nseeds = [0, 1]\n', 1, "preset"),
    ('[grid]\nseeds = [0, 1]\n[resources]\ncpus = 1\n[resources.eval]\nram = 3\n', 6,
     "resources.eval.ram"),
    ('[grid]\nseeds = [0, 1]\nattack = ["fgsm"]\n[overrides]\nnorm = "l2"\n', 3, "grid.attack"),
    ('[grid\nseeds = [0, 1]\n', 1, "invalid TOML"),
    ('[grid]\nseeds = [0, 1]\n[overrides]\ndata_root = "no/such/folder"\n', 4,
     "overrides.data_root"),
]


@pytest.mark.parametrize("text,line,key", BAD)
def test_bad_sweep_files_name_key_and_line(tmp_path, capsys, text, line, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert sweep_main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert key in err, err
    if line is not None:
        assert f"{path}:{line}:" in err, err
    assert not (tmp_path / "out").exists()


def test_bad_flags(tiny_toml, tmp_path, capsys):
    assert sweep_main([str(tiny_toml), "--address", "auto"]) == 2
    assert "--executor ray" in capsys.readouterr().err
    assert sweep_main([str(tiny_toml), "--executor", "dask"]) == 2
    assert "unknown executor 'dask'" in capsys.readouterr().err
    assert sweep_main([str(tmp_path / "none.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_ray_missing_says_how_to_install(tiny_toml, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert sweep_main([str(tiny_toml), "--executor", "ray", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'robustpath[ray]'" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- local executor
def test_local_sweep_writes_cells_and_aggregate(local_run):
    out, trained = local_run
    assert {t["threads"] for t in _tasks(out)} == {1}  # [resources] cpus = 1, as on Ray
    assert torch.get_num_threads() == THREADS  # and the caller's setting is back
    assert sorted(trained) == [0, 1, 2]  # endpoint seed 0 serves both pairs, trained once
    for cell in CELLS:
        d = out / "cells" / cell
        for f in ("config.json", "records.csv", "examples.npz", "tables/summary.md",
                  "plots/paths.png", "done.json", "endpoints.json", "strong_eval.csv",
                  "strong_examples.npz"):
            assert (d / f).is_file(), (cell, f)
        assert len(pd.read_csv(d / "records.csv")) == 4 * 3  # 2 aligns x 2 paths x 3 t
    md = (out / "aggregate" / "summary.md").read_text()
    assert "Robust min (grid): unaligned" in md and "Robust min (grid): aligned (weight)" in md
    assert "| fashion-mnist | mlp | bezier | 2 |" in md and " ± " in md
    long = pd.read_csv(out / "aggregate" / "summary.csv")
    assert set(long["pairs"]) == {2} and len(long) == 4
    assert (out / "aggregate" / "plots" / "fashion-mnist-mlp.png").is_file()
    status = json.loads((out / "status.json").read_text())
    assert status["counts"]["done"] == 2 and status["counts"]["failed"] == 0


def test_report_rebuilds_the_sweep_table(local_run, capsys):
    out, _ = local_run
    before = (out / "aggregate" / "summary.md").read_bytes()
    (out / "aggregate" / "summary.md").unlink()
    assert report_main([str(out)]) == 0
    assert (out / "aggregate" / "summary.md").read_bytes() == before
    assert "Robust loss barrier (grid): unaligned" in capsys.readouterr().out


def test_rerun_does_no_work_and_resumes_a_lost_cell(local_run, tiny_toml, monkeypatch):
    out, _ = local_run

    def boom(*a, **k):
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(stages, "train_endpoint", boom)
    monkeypatch.setattr(stages, "evaluate_path", boom)
    real = curve_train.train_curve
    monkeypatch.setattr(curve_train, "train_curve",
                        lambda *a, **k: real(*a, **{**k, "on_epoch_end": boom}))
    before = _mtimes(out)
    assert sweep_main([str(tiny_toml), "--out", str(out), "--no-progress"]) == 0
    assert _tasks(out) == []
    assert _mtimes(out) == before

    # a crash before the second cell was written: only its tasks run, all from the cache
    cell = out / "cells" / CELLS[1]
    records = (cell / "records.csv").read_bytes()
    for f in ("done.json", "records.csv", "examples.npz"):
        (cell / f).unlink()
    assert sweep_main([str(tiny_toml), "--out", str(out), "--no-progress"]) == 0
    tasks = _tasks(out)
    assert len(tasks) == 12 + 8 and {t["stage"] for t in tasks} == {"endpoint", "align", "curve",
                                                                 "eval", "strong"}
    assert (cell / "records.csv").read_bytes() == records


# ---------------------------------------------------------------- Ray executor
@pytest.mark.slow  # 20 s: Ray's start; the fast tier stays under 6 min on 2 cores
def test_ray_records_equal_local(ray_run, local_run):
    (ray_out, _), (local_out, _) = ray_run, local_run
    for cell in CELLS:
        a = pd.read_csv(local_out / "cells" / cell / "records.csv")
        b = pd.read_csv(ray_out / "cells" / cell / "records.csv")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        with np.load(local_out / "cells" / cell / "examples.npz") as za, \
                np.load(ray_out / "cells" / cell / "examples.npz") as zb:
            assert sorted(za.files) == sorted(zb.files)
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k])


@pytest.mark.slow  # this and the next three share Ray's start and sweep (15-20 s); the Ray
# executor rarely changes, and the same sweep on the local executor is in the fast tier above
def test_ray_trains_the_shared_endpoint_once(ray_run):
    out, _ = ray_run
    endpoints = [t for t in _tasks(out) if t["stage"] == "endpoint"]
    assert len(endpoints) == 3 and all(t["computed"] for t in endpoints)
    assert len({t["key"] for t in endpoints}) == 3
    assert len(list((out / "ckpt" / "endpoints").glob("*.json"))) == 3
    assert len(_tasks(out)) == 38 and not any("error" in t for t in _tasks(out))  # 15 strong
    assert {t["threads"] for t in _tasks(out)} == {1}


@pytest.mark.slow
def test_ray_retries_a_failed_task(ray_run):
    out, marker = ray_run
    assert marker.is_file()  # the first curve task failed once ...
    for cell in CELLS:       # ... was retried, and the sweep completed
        assert (out / "cells" / cell / "done.json").is_file()


@pytest.mark.slow
def test_ray_rerun_does_no_work(ray_run, tiny_toml):
    out, _ = ray_run
    before = _mtimes(out)
    assert sweep_main([str(tiny_toml), "--out", str(out), "--executor", "ray",
                       "--no-progress"]) == 0
    assert _tasks(out) == [] and _mtimes(out) == before


@pytest.mark.slow
def test_ray_task_failing_for_good_fails_its_cell_only(ray_run, tiny_toml, tmp_path, capsys,
                                                       monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(ray_run[0], out)
    for cell in CELLS:
        (out / "cells" / cell / "done.json").unlink()
    monkeypatch.setenv(sweep_nodes.FAULT_ENV, f"eval@{CELLS[0]}:always")
    capsys.readouterr()
    assert sweep_main([str(tiny_toml), "--out", str(out), "--executor", "ray",
                       "--no-progress"]) == 1
    captured = capsys.readouterr()
    # the cell names its first failed node: the eval node, or (Ray finishing them in
    # either order) the strong node downstream of it, which reports the eval's fault
    assert f"FAILED {CELLS[0]}: " in captured.err
    assert "InjectedFault: injected fault in eval" in captured.err
    assert not (out / "cells" / CELLS[0] / "done.json").exists()
    assert (out / "cells" / CELLS[1] / "done.json").is_file()
    status = json.loads((out / "status.json").read_text())["cells"]
    assert status[CELLS[0]]["state"] == "failed" and status[CELLS[1]]["state"] == "done"
    # the table across cells still has the finished cell (one pair)
    assert "| fashion-mnist | mlp | bezier | 1 |" in (out / "aggregate" / "summary.md").read_text()
