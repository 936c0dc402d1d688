"""Speed changes to the training loops keep every bit (issue 29 item 2).

A tiny endpoint training (two seeds, two epochs, with per-epoch checkpoints) and a tiny
Bezier fit between them must write the safetensors bytes that the loops wrote before
the changes (fused SGD steps, progress bars inside epochs): the digests below were
recorded with the code of commit d1360db. Floating-point results depend on the CPU's
kernels and the torch version, so the check runs where the digests were recorded
(torch 2.14.1, AVX512 oneDNN kernels, one thread) and is skipped elsewhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from robustpath import data as data_mod
from robustpath.attacks.base import AttackConfig
from robustpath.paths.curves import build_curve
from robustpath.paths.fit import CurveTrainConfig, train_curve
from robustpath.train.loop import TrainConfig, train_endpoint

RECORDED = {
    "ep0": "05353f0dd56cdaac864c12c2826357de4e8dcf9b89ca298e379ebda3e36c0546",
    "ep1": "c4734d984606e09205db5366ba44899bb95959f3fa8c101dc53a589be76bccae",
    "curve": "454cf6ed5e7e0c0f34d4964b0586c56befa385f73db1611817f2964d34d47637",
}
#: the bench's stages, quick preset, 512 examples, 1 + 1 epochs (recorded with d1360db)
STAGE_RECORDED = {"ep0": "522e08ca2aec193bf650aa3305b8fa21a87569052c03fcafd0bdaa14c09084ca",
                  "curve": "f376901678792bb66e77923e0d86a810cec8bd9466cc15d49d6179473df1c024"}
WHERE = ("2.14.1", "AVX512")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif((torch.__version__.split("+")[0], torch.backends.cpu.get_cpu_capability())
                    != WHERE, reason="digests recorded with torch 2.14.1 on AVX512 kernels")
def test_tiny_endpoint_and_curve_training_write_the_recorded_bytes(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = data_mod.load_subsets("fashion-mnist", None, 512, 100)
        attack = AttackConfig(name="pgd", eps=0.1, steps=2)
        got, ends = {}, []
        for seed in (0, 1):
            tc = TrainConfig(seed=seed, epochs=2, batch_size=128, train_subset=512,
                             test_subset=100, attack=attack,
                             eval_attack=AttackConfig(eps=0.1, steps=2, seed=0))
            model, _ = train_endpoint(tc, tmp_path / f"ep{seed}", progress=False, data=d)
            ends.append(model)
            got[f"ep{seed}"] = _digest(tmp_path / f"ep{seed}.safetensors")
        curve = build_curve("bezier", ends[0], ends[1], bends=1)
        train_curve(curve, d[0], d[1], CurveTrainConfig(epochs=2, batch_size=128, lr=0.02,
                                                        attack=attack),
                    tmp_path / "curve", progress=False)
        got["curve"] = _digest(tmp_path / "curve" / "final.safetensors")
    finally:
        torch.set_num_threads(threads)
    assert got == RECORDED


@pytest.mark.skipif((torch.__version__.split("+")[0], torch.backends.cpu.get_cpu_capability())
                    != WHERE, reason="digests recorded with torch 2.14.1 on AVX512 kernels")
def test_the_bench_stage_writes_the_recorded_endpoint_and_curve_bytes(tmp_path):
    """The same through the bench's stage functions with the quick preset's settings
    (momentum, Nesterov, weight decay, one-cycle schedule): the test above passed with
    fused SGD steps, which move these bytes (found after the default run changed)."""
    from robustpath.config import from_preset
    from robustpath.engine import stages
    from robustpath.engine.stages_common import RunData

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = from_preset("quick", train_subset=512, test_subset=128, endpoint_epochs=1,
                          curve_epochs=1, seeds=[0, 1])
        d = RunData.load(cfg)
        cpu = torch.device("cpu")
        ma, _, ka = stages.endpoint(cfg, 0, tmp_path, d, cpu, False)
        mb, _, kb = stages.endpoint(cfg, 1, tmp_path, d, cpu, False)
        stages.curve(cfg, "bezier", ma, mb, ka, kb, tmp_path, d, cpu, False)
        got = {"ep0": _digest(next(tmp_path.glob("ckpt/endpoints/*seed0*.safetensors"))),
               "curve": _digest(next(tmp_path.glob("ckpt/curves/*/final.safetensors")))}
    finally:
        torch.set_num_threads(threads)
    assert got == STAGE_RECORDED
