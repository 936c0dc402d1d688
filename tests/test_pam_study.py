"""studies.pam_study's inputs: found by the run's stage keys (robustpath.engine.keys), the
permutation read from the alignment stage's sidecar, not parsed from file names."""

from __future__ import annotations

import pytest
import torch

from robustpath import models
from robustpath.align import align
from robustpath.config import from_preset
from robustpath.data import Batches
from robustpath.engine import keys, stages
from robustpath.errors import UserError
from robustpath.io.store import atomic_write_json, config_hash, save_model
from studies import pam_study


def _fake_run(run, fmnist):
    """A bench run folder holding what the study reads: config.json, endpoints 0 and 1
    (untrained cnn-small, under their stage keys) and their activation alignment with
    its saved permutation; plus a decoy endpoint whose name fits the old glob."""
    cfg = from_preset("quick", out=str(run))
    atomic_write_json(run / "config.json", cfg.to_dict())
    nets, ks = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = models.create(cfg.arch, cfg.dataset).eval()
        tc = keys.endpoint_config(cfg, seed)
        k = config_hash(tc.cache_key())
        save_model(stages._ckpt(run, "endpoints", f"{cfg.arch}-seed{seed}-{k}"), m,
                   {"config": tc.to_dict(), "metrics": {}})
        nets.append(m)
        ks.append(k)
    # another configuration's seed-1 endpoint, sorted first: a file-name glob would take it
    save_model(stages._ckpt(run, "endpoints", f"{cfg.arch}-seed1-000000000000"), nets[0], {})
    x, y = fmnist[0][:250], fmnist[1][:250]
    aligned, perm, report = align(nets[0], nets[1], method="activation",
                                  data=Batches(x, y, 250))
    spec = keys.align_spec(cfg, "activation", *ks)
    save_model(stages._ckpt(run, "align", f"activation-{config_hash(spec)}"), aligned,
               {"report": dict(report.to_dict() if hasattr(report, "to_dict") else report), "spec": spec, "perm": perm.to_dict()})
    return nets, aligned, perm


def test_inputs_by_stage_keys_with_the_saved_permutation(tmp_path, fmnist):
    nets, aligned, perm = _fake_run(tmp_path, fmnist)
    assert not perm.is_identity()  # else the check below could not tell it from a default
    a, b, ab, got = pam_study._load_inputs(tmp_path, "cpu")
    for mine, theirs in ((a, nets[0]), (b, nets[1]), (ab, aligned)):
        sd = theirs.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in mine.state_dict().items())
    assert set(got) == set(perm) and all(torch.equal(got[g], perm[g]) for g in perm)


def test_missing_inputs_fail_in_one_line(tmp_path, fmnist):
    with pytest.raises(UserError, match="config.json"):
        pam_study._load_inputs(tmp_path, "cpu")
    _fake_run(tmp_path, fmnist)
    for f in (tmp_path / "ckpt" / "align").glob("activation-*.json"):
        f.unlink()
    with pytest.raises(UserError, match="no checkpoint .*align"):
        pam_study._load_inputs(tmp_path, "cpu")
