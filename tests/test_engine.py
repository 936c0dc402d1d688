"""The engine: one plan executed by one runner for bench and sweeps.

A tiny run (Fashion-MNIST, ``mlp``, one seed pair, unaligned and weight-aligned line and
bezier paths, with the strong, curvature and plane stages) gives the same bytes with one
worker (serial, in process) and two worker processes, and the same records as a one-cell
sweep (local; Ray in the slow tier) of the same settings; the run log is plain lines.
"""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from robustpath import bench
from robustpath.config import from_preset
from robustpath.engine.plan import build_plan
from robustpath.sweep.__main__ import main as sweep_main

SETTINGS = {"train_subset": 300, "test_subset": 40, "endpoint_epochs": 1, "curve_epochs": 1,
            "t_points": 3, "train_steps": 1, "eval_steps": 2, "bn_batches": 1, "bootstrap": 20,
            "plane_grid": 3, "curvature_examples": 2, "curvature_iters": 2,
            "strong_examples": 6, "aa_version": "custom", "aa_attacks": ["apgd-ce"],
            "strong_pgd_steps": 2, "strong_pgd_restarts": 1, "refine_rounds": 1}
FLAGS = {"train_subset": "--train-subset", "test_subset": "--test-subset",
         "endpoint_epochs": "--epochs", "curve_epochs": "--curve-epochs",
         "t_points": "--t-points", "train_steps": "--train-steps", "eval_steps": "--steps",
         "bn_batches": "--bn-batches", "bootstrap": "--bootstrap", "plane_grid": "--plane-grid",
         "curvature_examples": "--curvature", "curvature_iters": "--curvature-iters",
         "strong_examples": "--strong-examples", "aa_version": "--aa-version",
         "aa_attacks": "--aa-attacks", "strong_pgd_steps": "--strong-pgd-steps",
         "strong_pgd_restarts": "--strong-pgd-restarts", "refine_rounds": "--refine-rounds"}
ARGS = ["--arch", "mlp", "--seeds", "0,1", "--align", "none,weight", "--paths", "line,bezier",
        "--no-progress"] + [a for k, flag in FLAGS.items() for a in
                            (flag, ",".join(SETTINGS[k]) if isinstance(SETTINGS[k], list)
                             else str(SETTINGS[k]))]
FILES = ("records.csv", "examples.npz", "strong_examples.npz", "plane.npz", "curvature.csv")


def _one_cell_toml(folder):
    """A sweep file of one cell with the bench run's settings."""
    lines = ['name = "one"', 'preset = "quick"', "[grid]", 'dataset = ["fashion-mnist"]',
             'arch = ["mlp"]', "seed_pairs = [[0, 1]]", 'align = ["none", "weight"]',
             'paths = ["line", "bezier"]', "[overrides]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in SETTINGS.items()]
    path = folder / "one.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny run with one worker and with two; the log of each."""
    base = tmp_path_factory.mktemp("engine")
    logs = {}
    for w in (1, 2):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert bench.main(ARGS + ["--workers", str(w), "--out", str(base / f"w{w}")]) == 0
        logs[w] = buf.getvalue()
    return base, logs


def test_workers_give_the_bytes_of_the_serial_run(runs):
    base, _ = runs
    for f in FILES:
        assert (base / "w1" / f).read_bytes() == (base / "w2" / f).read_bytes(), f


def test_run_log_has_a_banner_and_a_line_per_stage_start_and_end(runs):
    _, logs = runs
    for w, log in logs.items():
        assert "\r" not in log
        assert f"on {w} worker" in log and "estimated" in log
        for stage in ("endpoint", "alignment", "curve", "path eval", "strong", "curvature",
                      "plane"):
            assert sum(f"] {stage}: start" in ln for ln in log.splitlines()) == 1, (stage, log)
            done = [ln for ln in log.splitlines() if f"] {stage}: done" in ln]
            assert len(done) == 1 and "left" in done[0], (stage, log)


def test_shared_strong_nodes_give_the_per_path_strong_stage(runs):
    """The strong stage's points are nodes shared between paths (t = 0 and t = 1 once per
    pair); the paths assembled from them hold exactly what the strong stage run path by
    path gives (``stages.strong``, the same cache: points at the ends keyed by the
    endpoint there)."""
    import json

    import torch

    from robustpath.config import BenchConfig
    from robustpath.engine import nodes, stages
    from robustpath.engine.sources import SOURCES

    base, _ = runs
    run = base / "w1"
    cfg = BenchConfig(**json.loads((run / "config.json").read_text()))

    plan = build_plan([SimpleNamespace(name="w1", cfg=cfg)])
    parts = [n.params["part"] for n in plan.nodes.values() if n.stage == "strong"]
    assert parts.count("a") == 1 and parts.count("b") == 1 and parts.count("interior") == 4
    data = nodes.run_data(cfg)
    got = np.load(run / "strong_examples.npz")
    src = SOURCES.get("seed")
    for (method, kind, pair), pn in plan.cells["w1"].paths.items():
        node = plan.nodes[pn.eval]
        c = nodes._curve(node, cfg, run, data, torch.device("cpu"), False)[0]
        res = stages.cached_eval(cfg, nodes._curve_key(node, cfg), run)
        sp = stages.strong(cfg, c.model_at, res, run, data, torch.device("cpu"), False,
                           endpoint_keys=tuple(src.key(cfg, s) for s in pair))
        pid = f"{method}-{kind}-s{pair[0]}-{pair[1]}"
        np.testing.assert_array_equal(got[f"{pid}/indices"], sp.indices)
        for p in sp.points:
            for k, v in p.arrays.items():
                np.testing.assert_array_equal(got[f"{pid}/{p.role}/{k}"], v, err_msg=pid)


def test_plane_rows_give_the_whole_plane(runs, tmp_path):
    """The plane is a node per lattice row, then the plane from its rows: the run's
    ``plane.npz`` equals the plane computed in one piece (``plane.stage``, empty cache)."""
    import json

    import torch

    from robustpath.config import BenchConfig
    from robustpath.engine import nodes
    from robustpath.paths import plane

    run = runs[0] / "w1"
    cfg = BenchConfig(**json.loads((run / "config.json").read_text()))
    plan = build_plan([SimpleNamespace(name="w1", cfg=cfg)])
    rows = [n for n in plan.nodes.values() if n.stage == "plane" and n.params["part"] != "main"]
    assert len(rows) == 2 * cfg.plane_grid
    saved = plane.load_planes(run / "plane.npz")
    data = nodes.run_data(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every node computes: the bytes are the one-thread run's
    try:
        for (method, _kind, _), pn in plan.cells["w1"].paths.items():
            if "plane" not in pn.stages:
                continue
            node = plan.nodes[pn.curve]
            c, _, ckey = nodes._curve(node, cfg, run, data, torch.device("cpu"), False)
            whole = plane.stage(cfg, c, ckey, tmp_path, data, torch.device("cpu"), False)
            assert sorted(whole) == sorted(saved[method])
            for k, v in whole.items():
                np.testing.assert_array_equal(saved[method][k], v, err_msg=f"{method} {k}")
    finally:
        torch.set_num_threads(threads)


def _makespan(plan, seconds, order, workers=2):
    """List scheduling of ``plan`` on ``workers``: whenever a worker is free, the first
    node of ``order`` whose inputs are done starts (what the local pool does)."""
    import heapq

    done, clock, running, todo = {}, 0.0, [], list(order)
    while todo or running:
        for nid in [n for n in todo if all(done.get(d, 1e18) <= clock
                                            for d in plan.nodes[n].deps)]:
            if len(running) == workers:
                break
            todo.remove(nid)
            heapq.heappush(running, (clock + seconds[nid], nid))
        clock, nid = heapq.heappop(running)
        done[nid] = clock
    return clock


def test_critical_order_starts_long_chains_first_and_shortens_the_default_run():
    """The pool's start order (Plan.critical_order on the log's estimates) is a
    dependency order, and on 2 workers it finishes the default plan sooner than plan
    order, at the bound node-seconds / 2 (within a node's length)."""
    from robustpath.engine.log import estimates

    class Cell:
        def __init__(self, name, cfg):
            self.name, self.cfg = name, cfg

    plan = build_plan([Cell("a", from_preset("quick"))])
    seconds = estimates(plan)
    order = plan.critical_order(seconds)
    assert sorted(order) == sorted(plan.nodes)
    pos = {nid: i for i, nid in enumerate(order)}
    assert all(pos[d] < pos[nid] for nid, n in plan.nodes.items() for d in n.deps)
    assert plan.nodes[order[0]].stage == "endpoint"
    by_plan, by_chain = (_makespan(plan, seconds, o) for o in (list(plan.nodes), order))
    bound = sum(seconds.values()) / 2
    assert by_chain < by_plan
    assert by_chain <= bound + max(seconds.values())


@pytest.mark.slow
def test_a_one_cell_sweep_gives_the_bench_records(runs, tmp_path):
    """The same plan object serves both: a sweep cell with the bench's settings (strong,
    curvature and plane stages included) writes the bench's records and arrays."""
    base, _ = runs
    toml = _one_cell_toml(tmp_path)
    out = tmp_path / "sweep"
    assert sweep_main([str(toml), "--out", str(out), "--no-progress"]) == 0
    cell = out / "cells" / "fashion-mnist-mlp-s0-1"
    a = pd.read_csv(base / "w1" / "records.csv")
    b = pd.read_csv(cell / "records.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for f in ("examples.npz", "strong_examples.npz", "plane.npz"):
        with np.load(base / "w1" / f) as za, np.load(cell / f) as zb:
            assert sorted(za.files) == sorted(zb.files), f
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k])
    assert (cell / "curvature.csv").read_bytes() == (base / "w1" / "curvature.csv").read_bytes()


def test_plan_nodes_per_stage_and_shared_nodes():
    """Every stage is a node; nodes are named by their cache keys, so a second cell with
    an overlapping pair reuses the endpoint and nothing downstream of the other seed."""
    cfg = from_preset("quick", seeds=[0, 1, 2, 3], curvature_examples=4)

    class Cell:
        def __init__(self, name, cfg):
            self.name, self.cfg = name, cfg

    plan = build_plan([Cell("a", cfg)])
    # strong: per pair 2 transfer sources, t = 0, t = 1, each path's own points
    assert plan.counts() == {"endpoint": 4, "align": 4, "curve": 8, "eval": 8,
                             "strong": 2 * (2 + 1 + 1) + 8, "curvature": 8,
                             "plane": 2 * (cfg.plane_grid + 1)}  # a node per row, then the plane
    seen = set()
    for nid, node in plan.nodes.items():  # dependency order
        assert set(node.deps) <= seen
        seen.add(nid)
    other = from_preset("quick", seeds=[0, 1], curvature_examples=4)
    both = build_plan([Cell("a", cfg), Cell("b", other)])
    assert len(both.nodes) == len(plan.nodes)  # pair (0, 1) is the same computation
    assert all(n.cells == ["a", "b"] for n in both.nodes.values() if n.stage == "plane")


@pytest.mark.slow
def test_a_one_cell_ray_sweep_gives_the_bench_records(runs, tmp_path):
    ray = pytest.importorskip("ray")
    base, _ = runs
    toml = _one_cell_toml(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert sweep_main([str(toml), "--out", str(tmp_path / "s"), "--executor", "ray",
                           "--no-progress"]) == 0
    finally:
        ray.shutdown()
    cell = tmp_path / "s" / "cells" / "fashion-mnist-mlp-s0-1"
    pd.testing.assert_frame_equal(pd.read_csv(base / "w1" / "records.csv"),
                                  pd.read_csv(cell / "records.csv"), check_exact=True)


@pytest.mark.slow  # 10 s: a fresh interpreter and two spawned workers
def test_workers_start_from_a_script_on_stdin(tmp_path):
    """``python - <<EOF`` (or ``python -c``) has a ``__main__`` whose ``__file__`` is no
    file; spawn would re-run it by path in each worker and fail. The pool hides it while
    workers start, so a two-worker bench runs from such a script."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    args = ["--arch", "mlp", "--seeds", "0,1", "--align", "none", "--paths", "line",
            "--train-subset", "200", "--test-subset", "40", "--epochs", "1", "--t-points", "3",
            "--bn-batches", "1", "--bootstrap", "20", "--steps", "2", "--train-steps", "1",
            "--plane-grid", "0", "--no-strong", "--refine-rounds", "0", "--no-progress",
            "--workers", "2", "--out", str(tmp_path / "run")]
    script = f"from robustpath import bench\nraise SystemExit(bench.main({args!r}))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(repo), os.environ.get("PYTHONPATH")])), "ROBUSTPATH_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "records.csv").is_file()
