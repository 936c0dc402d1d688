"""The soup runs through the engine (issue 26): its plan of endpoint / merge / soup /
triangle / line nodes, executed by the engine's executors, gives the same bytes with
one worker and with two, resumes without computing anything, and takes its endpoints
from the engine's sources (trained seeds, or the user's files)."""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest

from robustpath.soup import cli as soup_cli

TINY = ["--models", "3", "--align", "weight", "--grid", "1", "--arch", "mlp", "--width", "0.125",
        "--epochs", "1", "--train-subset", "64", "--test-subset", "16", "--steps", "1",
        "--train-steps", "1", "--bn-batches", "1", "--no-progress", "--device", "cpu"]
OUTPUTS = ("soup.csv", "triangle.csv", "barrier_matrix.csv", "merge.json")


def _main(argv) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert soup_cli.main(argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """A tiny soup run with one worker (in process), and its log."""
    out = tmp_path_factory.mktemp("soup") / "w1"
    return out, _main([*TINY, "--workers", "1", "--out", str(out)])


def _cache(folder):
    """Every stored cache entry with its modification time (lock files aside)."""
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in (folder / "ckpt").rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_plan_has_a_node_per_stage_computation(serial):
    out, log = serial
    # 3 endpoints; none and weight: a merge, a soup, a triangle, 3 lines each
    assert ("plan: 15 nodes (endpoint 3, merge 2, soup 2, triangle 2, soup line 6) on 1 worker"
            in log)
    soup = pd.read_csv(out / "soup.csv")
    assert list(soup["model"][:4]) == ["seed0", "seed1", "seed2", "soup"]
    assert list(dict.fromkeys(soup["align"])) == ["none", "weight"]


@pytest.mark.slow  # 10 s; the fast tier stays under 6 min on 2 cores
def test_two_workers_give_the_bytes_of_the_serial_run(serial, tmp_path):
    out, _ = serial
    _main([*TINY, "--workers", "2", "--out", str(tmp_path / "w2")])
    for f in OUTPUTS:
        assert (out / f).read_bytes() == (tmp_path / "w2" / f).read_bytes(), f


def test_a_rerun_computes_nothing(serial):
    """Resume: executing the run's plan again loads every node's stored output (no
    cache entry is written again, the point cache included) and gives the same results."""
    out, _ = serial
    before = _cache(out)
    from robustpath.engine.run import execute
    from robustpath.soup.nodes import build_plan

    sc = soup_cli.parse([*TINY, "--out", str(out)])[1]
    plan, sp = build_plan(sc, out.name)
    with contextlib.redirect_stdout(io.StringIO()):
        results = execute(plan, out, workers=1, progress=False)
    assert not [n for n, r in results.items() if r.get("computed")]
    assert _cache(out) == before
    frames = soup_cli.assemble(sc, sp, results)[0]
    assert frames["soup"].to_csv(index=False, float_format="%.6f").encode() == \
        (out / "soup.csv").read_bytes()


@pytest.mark.slow
def test_endpoint_files_are_a_source_too(serial, tmp_path):
    """``--endpoints`` with the run's own trained checkpoints measures the same networks:
    the same numbers, the rows named by the files' stems."""
    out, _ = serial
    files = sorted((out / "ckpt" / "endpoints").glob("*.safetensors"))
    argv = [a for a in TINY if a not in ("--models", "3", "--arch", "mlp", "--width", "0.125")]
    _main([*argv, "--endpoints", ",".join(map(str, files)), "--workers", "1",
           "--out", str(tmp_path / "files")])
    a, b = pd.read_csv(out / "soup.csv"), pd.read_csv(tmp_path / "files" / "soup.csv")
    stems = {f"seed{i}": f.stem for i, f in enumerate(files)}
    assert list(b["model"]) == [stems.get(m, m) for m in a["model"]]
    pd.testing.assert_frame_equal(a.drop(columns="model"), b.drop(columns="model"))
    assert (out / "triangle.csv").read_bytes() == (tmp_path / "files" / "triangle.csv").read_bytes()


def test_soup_takes_the_bench_endpoint_flags(tmp_path):
    sc = soup_cli.parse(["--seeds", "2,4,6", "--print-config"])[1]
    assert sc.seeds == [2, 4, 6] and sc.models == 3
    from robustpath.errors import UserError

    for argv, msg in [(["--seeds", "0,1"], "--models must be >= 3"),
                      (["--models", "4", "--seeds", "0,1,2"], "--models 4 but 3 endpoints"),
                      (["--seeds", "0,1,2", "--endpoints", "a,b,c"], "exclude each other")]:
        with pytest.raises(UserError, match=msg):
            soup_cli.parse(argv)


@pytest.mark.slow
def test_a_ray_run_gives_the_bytes_of_the_serial_run(serial, tmp_path):
    """The same plan on the engine's Ray executor (local mode, workers in other processes)."""
    ray = pytest.importorskip("ray")
    from robustpath.engine import ray_executor  # noqa: F401 - registers the ray executor
    from robustpath.engine.executors import EXECUTORS
    from robustpath.engine.nodes import Context
    from robustpath.soup.nodes import build_plan
    from robustpath.sweep.spec import Resources
    from robustpath.sweep.tracker import Tracker

    out, _ = serial
    sc = soup_cli.parse([*TINY, "--out", str(tmp_path / "ray")])[1]
    plan, sp = build_plan(sc, "ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        exe = EXECUTORS.get("ray")()
        got: dict = {}  # the cell's results, whole (the tracker keeps only summaries after)
        tracker = Tracker(plan, tmp_path / "ray", on_cell=lambda _, res: got.update(res),
                          slots=exe.prepare(), progress=False)
        with contextlib.redirect_stdout(io.StringIO()):
            exe.execute(plan, Context.from_env(tmp_path / "ray", False), tracker, Resources())
    finally:
        ray.shutdown()
    assert not [r["error"] for r in tracker.results.values() if "error" in r]
    frames = soup_cli.assemble(sc, sp, got)[0]
    for name, file in (("soup", "soup.csv"), ("triangle", "triangle.csv"),
                       ("barrier", "barrier_matrix.csv")):
        assert frames[name].to_csv(index=False, float_format="%.6f").encode() == \
            (out / file).read_bytes(), file
