"""The one-call Python API: ``rp.benchmark`` (run by examples/benchmark_two_models.py on
tiny sizes), ``rp.load_model``, AttackConfig checked when made, short reprs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustpath as rp
from robustpath import bench
from robustpath.config import from_preset
from robustpath.engine import stages
from robustpath.io import records
from robustpath.io.store import read_json

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "benchmark_two_models.py"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("benchmark_two_models", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("bm") / "run"
    return mod, mod.main(["--tiny", "--out", str(out)]), out


def test_example_benchmark_writes_a_run(example_run):
    mod, result, out = example_run
    assert result.run_dir == out and (out / "report.html").is_file()
    assert {"align", "curve"} <= set(result.summary.columns) and len(result.summary) == 4
    assert len(repr(result)) < 120 and "<table" in result._repr_html_()
    recs = records.read(out)
    assert {(r.endpoint_a, r.endpoint_b) for r in recs} == {("model_a", "model_b")}
    # the ends are the given models: the saved weights, with their own BN statistics
    cfg = from_preset("quick", **{k: v for k, v in read_json(out / "config.json").items()
                                  if k in ("dataset", "train_subset", "test_subset")})
    data = stages.RunData.load(cfg)
    for r in recs:
        for t_idx, name in ((0, "model_a"), (-1, "model_b")):
            m = mod.SmallNet()
            from safetensors.torch import load_file

            m.load_state_dict(load_file(str(out / "ckpt" / "models" / f"{name}.safetensors")))
            with torch.no_grad():
                own = F.cross_entropy(m.eval()(data.x_test), data.y_test, reduction="none")
            np.testing.assert_allclose(r.result.clean_loss[t_idx], own.numpy(), atol=1e-4)
    # PathResult: short repr, a per-t table
    res = recs[0].result
    assert len(repr(res)) < 150 and "array" not in repr(res)
    frame = res.to_dataframe()
    assert list(frame.columns) == ["t", "speed", "clean_acc", "clean_loss", "robust_acc",
                                   "robust_loss", "point"]
    np.testing.assert_allclose(frame["robust_acc"], res.robust_correct.mean(1))
    assert "<table" in res._repr_html_()


def test_attack_config_checked_when_made(capsys):
    with pytest.raises(rp.UserError) as e:
        rp.AttackConfig(eps=8)
    assert bench.main(["--eps", "8", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith(str(e.value))
    with pytest.raises(rp.UserError):
        rp.AttackConfig(steps=0)
    assert rp.AttackConfig(norm="l2", eps=2.0).eps == 2.0  # L2 radii may exceed 1


def test_align_report_repr_is_short(fmnist):
    a, b = rp.create_model("cnn-small"), rp.create_model("cnn-small")
    _, _, report = rp.align_models(a, b, method="weight", example_input=fmnist[2][:2])
    assert len(repr(report)) < 160 and repr(report).startswith("AlignReport(method=weight")
    assert "<table" in report._repr_html_()


def test_load_model_and_defaults(tmp_path, monkeypatch):
    import inspect
    import subprocess

    from robustpath.train import cli as train_cli

    assert inspect.signature(rp.evaluate_path).parameters["device"].default == "auto"
    assert inspect.signature(rp.fit_curve).parameters["device"].default == "auto"
    monkeypatch.chdir(tmp_path)  # train without --out: runs/train-<dataset>-<arch>-s<seed>
    assert train_cli.main(["--train-subset", "200", "--test-subset", "40", "--epochs", "1",
                           "--steps", "1", "--device", "cpu", "--seed", "3"]) == 0
    stem = tmp_path / "runs" / "train-fashion-mnist-cnn-small-s3"
    assert stem.with_suffix(".safetensors").is_file()
    m = rp.load_model(stem, device="cpu")
    assert not m.training and m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(rp.UserError):
        rp.load_model(tmp_path / "nothing.pt")
    # every command's default folder is under runs/, which git ignores
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["git", "check-ignore", "-q", "runs/x/records.csv"], cwd=root)
    assert r.returncode == 0


def test_provenance_records_no_machine_path(example_run):
    import json

    from robustpath.io.store import portable_argv

    root = Path(__file__).resolve().parents[1]
    assert portable_argv(["/tmp/regen/robustpath/bench.py", "--no-progress"]) == [
        "robustpath/bench.py", "--no-progress"]
    assert portable_argv([str(root / "robustpath" / "zoo" / "__main__.py"),
                          str(root / "results" / "x")]) == ["robustpath/zoo/__main__.py",
                                                            "results/x"]
    argv = json.loads((example_run[2] / "provenance.json").read_text())["argv"]
    assert not argv[0].startswith("/") and str(root) not in " ".join(argv)


@pytest.mark.slow  # about 40 s: two tiny trainings and a tiny benchmark
def test_readme_benchmark_block_runs_as_written_on_tiny_sizes(tmp_path, monkeypatch):
    """The README's ``rp.benchmark`` block, executed as written with only its sizes
    shrunk (every replacement must apply), writes a run whose report.html passes the
    browser check."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    block = readme.split("**Two models to a report in one call**", 1)[1]
    block = block.split("```python\n", 1)[1].split("```", 1)[0]
    tiny = ("test_subset=60, curve_epochs=1, t_points=3, bn_batches=1, bootstrap=40, "
            "eval_steps=1, train_steps=1, refine_rounds=0, plane_grid=0, strong=False, "
            f"out={str(tmp_path / 'run')!r}")
    for big, small in (("subset=5000)", "subset=300)"), ("epochs=3)", "epochs=1)"),
                       ("train_subset=5000", "train_subset=300"), ("test_subset=500", tiny)):
        assert big in block, big
        block = block.replace(big, small)
    monkeypatch.syspath_prepend(str(repo))
    ns = {"__name__": "readme"}
    exec(compile(block, "README.md (rp.benchmark)", "exec"), ns)
    assert (tmp_path / "run" / "records.csv").is_file()
    from robustpath.report import pagecheck

    if pagecheck.find_browser() is None:
        pytest.skip("chromium not installed (make test installs it)")
    problems = pagecheck.check_page(tmp_path / "run" / "report.html")
    assert not problems, problems
