"""Path stages (issue 26): a stage is its own module plus one registration
(:mod:`robustpath.engine.path_stages`), and the strong stage's points are nodes shared
between paths (issue 29).

``tests/extra_stage.py`` declares a stage the engine has never heard of (the curve's
weight norm at t = 0.5, on bezier paths); a tiny bench run plans it, runs it, times it
and writes its file, and a fresh process (as a spawn or Ray worker) finds its runner
from the module path its node records."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustpath import bench
from robustpath.config import from_preset
from robustpath.engine import path_stages
from robustpath.engine.plan import build_plan

TESTS = Path(__file__).resolve().parent


class _Cell:
    def __init__(self, name, cfg):
        self.name, self.cfg = name, cfg


@pytest.fixture
def extra_stage():
    """``tests/extra_stage.py`` registered for this test only."""
    sys.path.insert(0, str(TESTS))
    sys.modules.pop("extra_stage", None)
    import extra_stage

    yield extra_stage
    path_stages.PATH_STAGES._items.pop(extra_stage.NAME, None)
    sys.modules.pop("extra_stage", None)
    sys.path.remove(str(TESTS))


def test_a_new_stage_is_its_module_plus_one_registration(extra_stage, tmp_path):
    cfg = from_preset("quick", arch="mlp", seeds=[0, 1], align=["none"])
    plan = build_plan([_Cell("c", cfg)])
    nodes = [n for n in plan.nodes.values() if n.stage == extra_stage.NAME]
    assert len(nodes) == 1 and nodes[0].params["kind"] == "bezier"  # applies: bezier only
    assert nodes[0].params["module"] == "extra_stage"  # what a worker imports

    out = tmp_path / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert bench.main(["--arch", "mlp", "--seeds", "0,1", "--align", "none", "--paths",
                           "line,bezier", "--no-strong", "--no-progress", "--train-subset",
                           "200", "--test-subset", "20", "--epochs", "1", "--curve-epochs",
                           "1", "--t-points", "3", "--train-steps", "1", "--steps", "1",
                           "--bn-batches", "1", "--bootstrap", "20", "--refine-rounds", "0",
                           "--plane-grid", "0",  # the quick preset's 13 x 13 plane: not needed
                           "--out", str(out)]) == 0
    log = buf.getvalue()
    assert "] weight norm: start (1 node)" in log and "] weight norm: done" in log
    timings = {r["stage"]: r for r in json.loads((out / "timings.json").read_text())["stages"]}
    assert timings["weight norm"]["calls"] == 1
    rows = (out / "weight_norm.csv").read_text().splitlines()
    assert rows[0] == "path_id,norm" and len(rows) == 2
    pid, value = rows[1].split(",")
    assert pid == "none-bezier-s0-1"
    # the value is the curve's: recompute it from the cached curve
    from robustpath.engine import nodes

    node = next(n for n in build_plan([_Cell("run", bench_cfg(out))]).nodes.values()
                if n.stage == "curve" and n.params["kind"] == "bezier")
    data = nodes.run_data(node.cfg)
    c = nodes._curve(node, node.cfg, out, data, torch.device("cpu"), False)[0]
    assert float(value) == float(torch.linalg.vector_norm(c.flat_at(0.5).detach().double()))


def bench_cfg(run_dir: Path):
    from robustpath.config import BenchConfig

    return BenchConfig(**json.loads((run_dir / "config.json").read_text()))


def test_a_worker_finds_a_stage_by_the_module_its_node_records():
    """A spawn or Ray worker has imported only the engine: the node's module is enough."""
    code = ("from robustpath.engine import path_stages as p; "
            "print(p.get('weight-norm', 'extra_stage').label)")
    env = {"PYTHONPATH": f"{TESTS}:{TESTS.parent}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "weight norm", r.stderr[-2000:]


def test_strong_points_at_the_ends_are_one_node_per_pair():
    """t = 0 (model A) and t = 1 (model B; an aligned path's end computes B's function)
    are one node per pair, the transfer sources one per endpoint, the path's own points
    (worst t) one per path; a path's strong nodes depend on its sources."""
    cfg = from_preset("quick", seeds=[0, 1, 2, 3])  # 2 pairs, align none + activation
    plan = build_plan([_Cell("c", cfg)])
    parts: dict[str, list] = {}
    for n in plan.nodes.values():
        if n.stage == "strong":
            parts.setdefault(n.params["part"], []).append(n)
    pairs, methods, paths = 2, len(cfg.align), 2 * len(cfg.align) * len(cfg.paths)
    assert {k: len(v) for k, v in parts.items()} == {
        "source-a": pairs, "source-b": pairs, "a": pairs, "b": pairs,
        "interior": paths}
    srcs = {n.id for k in ("source-a", "source-b") for n in parts[k]}
    for k in ("a", "b", "interior"):
        assert all(len(set(n.deps) & srcs) == 2 for n in parts[k])
    assert methods == 2  # so one node per pair means shared across alignment methods
    for pn in plan.cells["c"].paths.values():
        assert set(pn.stages["strong"]) == {"source-a", "source-b", "a", "b", "interior"}
