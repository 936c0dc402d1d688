"""Endpoints from a user's files (``python -m robustpath.bench --endpoints A,B``):
robustpath.train.loop checkpoints and a user architecture given as ``module:Factory``;
records name endpoints by file stem, t = 0 and t = 1 are the loaded models, a pickle
is never executed."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustpath import bench
from robustpath.engine import stages
from robustpath.engine.endpoint_files import load_endpoint
from robustpath.errors import UserError
from robustpath.io import records
from robustpath.train import cli as train_cli

TINY = ["--train-subset", "300", "--test-subset", "60", "--curve-epochs", "1",
        "--t-points", "3", "--bn-batches", "1", "--bootstrap", "20", "--steps", "1",
        "--train-steps", "1", "--refine-rounds", "0", "--no-strong", "--plane-grid", "0",
        "--paths", "line,bezier", "--no-progress"]
FACTORY = "user_arch:TinyNet"


def _end_losses(run_dir, cfg, models):
    """Per-example clean loss at t = 0 and 1 from the records, and the loaded models' own."""
    recs = records.read(run_dir)
    data = stages.RunData.load(cfg)
    out = []
    for r in recs:
        for t_idx, m in ((0, models[0]), (-1, models[1])):
            with torch.no_grad():
                own = F.cross_entropy(m.eval()(data.x_test), data.y_test, reduction="none")
            out.append((r, r.result.clean_loss[t_idx], own.numpy()))
    return recs, out


@pytest.fixture(scope="module")
def train_outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    for seed in (0, 1):
        assert train_cli.main(["--train-subset", "300", "--test-subset", "60", "--epochs", "1",
                               "--steps", "1", "--seed", str(seed), "--device", "cpu",
                               "--out", str(d / f"ep{seed}")]) == 0
    return d / "ep0.safetensors", d / "ep1"  # with and without the suffix


def test_bench_endpoints_from_train_outputs(train_outputs, tmp_path):
    a, b = train_outputs
    out = tmp_path / "run"
    argv = TINY + ["--endpoints", f"{a},{b}", "--align", "none,weight", "--out", str(out)]
    cfg = bench.config_from_args(bench.parser().parse_args(argv))
    assert cfg.arch == "cnn-small" and cfg.seeds == [] and cfg.bn_endpoints is False
    assert bench.main(argv) == 0
    frame = records.read_frame(out)
    assert set(frame["endpoint_a"]) == {"ep0"} and set(frame["endpoint_b"]) == {"ep1"}
    assert "none-line-ep0__ep1" in set(frame["path_id"])
    models = [stages.endpoint_from_file(cfg, p, "cpu")[0] for p in (a, b)]
    recs, ends = _end_losses(out, cfg, models)
    assert len(recs) == 4
    for r, got, own in ends:  # the path's ends are the loaded models, aligned or not
        np.testing.assert_allclose(got, own, atol=1e-4, err_msg=r.path_id)


def test_bench_endpoints_user_architecture(tmp_path):
    from safetensors.torch import save_file
    from user_arch import TinyNet

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = TinyNet()
        m.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics, kept at the ends
            m(torch.rand(64, 1, 28, 28))
        models.append(m.eval())
    torch.save(models[0].state_dict(), tmp_path / "mine_a.pt")
    save_file(models[1].state_dict(), str(tmp_path / "mine_b.safetensors"))
    out = tmp_path / "run"
    argv = TINY + ["--arch", FACTORY, "--endpoints",
                   f"{tmp_path / 'mine_a.pt'},{tmp_path / 'mine_b.safetensors'}",
                   "--align", "none,weight", "--paths", "line", "--out", str(out)]
    assert bench.main(argv) == 0
    cfg = bench.config_from_args(bench.parser().parse_args(argv))
    recs, ends = _end_losses(out, cfg, models)
    assert {(r.endpoint_a, r.endpoint_b) for r in recs} == {("mine_a", "mine_b")}
    for r, got, own in ends:
        np.testing.assert_allclose(got, own, atol=1e-4, err_msg=r.path_id)
    # the function form of a factory, and the key follows the file's content
    _, _, k1 = load_endpoint(tmp_path / "mine_a.pt", "user_arch:tiny_net",
                             "fashion-mnist", 10)
    torch.save(models[1].state_dict(), tmp_path / "mine_a.pt")
    _, _, k2 = load_endpoint(tmp_path / "mine_a.pt", "user_arch:tiny_net",
                             "fashion-mnist", 10)
    assert k1 != k2


class _Payload:
    """Pickled as a call that creates a marker file: run only if a pickle is executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("force_no_weights_only", [False, True])
def test_malicious_pt_refused(tmp_path, monkeypatch, capsys, force_no_weights_only):
    from user_arch import TinyNet

    if force_no_weights_only:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    sd = TinyNet().state_dict()
    sd["extra"] = _Payload(marker)
    torch.save(sd, tmp_path / "evil.pt")
    torch.save(TinyNet().state_dict(), tmp_path / "good.pt")
    out = tmp_path / "run"
    rc = bench.main(TINY + ["--arch", FACTORY, "--endpoints",
                            f"{tmp_path / 'evil.pt'},{tmp_path / 'good.pt'}", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not marker.exists()
    assert len(err.splitlines()) == 1 and "evil.pt refused" in err and "pickle" in err
    assert not out.exists()  # refused before anything is written


def test_endpoint_input_errors(train_outputs, tmp_path):
    a, b = train_outputs

    def cfg(*argv):
        return bench.config_from_args(bench.parser().parse_args(TINY + list(argv)))

    torch.save({}, tmp_path / "x.pt")
    for argv, msg in [
        (["--endpoints", str(a)], "needs two files"),
        (["--endpoints", f"{a},{a}"], "the stem"),
        (["--endpoints", f"{a},{b}", "--seeds", "0,1"], "exclude each other"),
        (["--endpoints", f"{tmp_path / 'x.pt'},{a}"], None),
        (["--arch", FACTORY], "needs --endpoints"),
        (["--arch", "user_arch_missing:Net", "--endpoints", f"{tmp_path / 'x.pt'},{b}"],
         None),
        (["--endpoints", f"{a},{b}", "--dataset", "mnist"], "trained on fashion-mnist"),
        (["--endpoints", f"{a},{b}", "--width", "2"], "holds a cnn-small x1 model"),
    ]:
        with pytest.raises(UserError) as e:  # before any work: when the config is made
            cfg(*argv)
        assert msg is None or msg in str(e.value), (argv, str(e.value))


def test_rp_benchmark_on_two_checkpoint_files(train_outputs, tmp_path):
    import robustpath as rp

    a, b = train_outputs
    result = rp.benchmark(a, b, dataset="fashion-mnist", eps=0.1, out=tmp_path / "run",
                          progress=False, train_subset=300, test_subset=60, t_points=3,
                          bn_batches=1, bootstrap=20, eval_steps=1, train_steps=1,
                          refine_rounds=0, plane_grid=0, strong=False, align=["none"],
                          paths=["line"])
    assert list(result.summary["curve"]) == ["line"]
    frame = records.read_frame(result.run_dir)
    assert set(zip(frame["endpoint_a"], frame["endpoint_b"])) == {("ep0", "ep1")}
    with pytest.raises(UserError, match="names apply"):
        rp.benchmark(a, b, names=("x", "y"))
