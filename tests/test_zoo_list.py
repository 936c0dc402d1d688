"""``zoo list`` offline: architectures built without weights or a network, and the
per-entry alignment verdict (whole / partial / refused).

The fast tests swap RobustBench's ImageNet L-inf registry for a few entries whose
constructors are real small torchvision / timm models - one asks torchvision for
pretrained weights, one asks timm, one opens a connection itself - and run the real
``list`` command with every socket call failing and recorded."""

from __future__ import annotations

import json
import socket
from collections import OrderedDict

import pytest
import timm
import torch
import torchvision
from torch import nn

from robustpath.zoo import access, arch
from robustpath.zoo.cli import main as zoo_main


@pytest.fixture
def no_net(monkeypatch):
    """Every connection or name look-up attempted outside robustpath's own guard is
    recorded and fails."""
    tried = []

    def refuse(*a, **_k):
        tried.append(a[1:] if a and isinstance(a[0], socket.socket) else a)
        raise OSError("test: network blocked")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("ROBUSTPATH_OFFLINE", "1")
    return tried


def _downloads_itself():
    # a constructor that fetches something on its own: the build must fail, not connect
    torch.hub.load_state_dict_from_url("https://download.pytorch.org/models/none.pth")
    return nn.Linear(2, 2)


ENTRIES = OrderedDict([
    ("TV_R18_pretrained", {  # resnet18(pretrained=True) downloads unless weights are off
        "model": lambda: nn.Sequential(torchvision.models.resnet18(pretrained=True)),
        "gdrive_id": "x", "preprocessing": "Res40Crop32"}),
    ("Timm_ViT_tiny", {
        "model": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=True,
                                           img_size=32, patch_size=8, depth=2),
        "gdrive_id": "y", "preprocessing": "Crop32"}),
    ("Timm_Swin_tiny", {
        "model": lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=True,
                                           img_size=56, depths=(2,), num_heads=(2,),
                                           embed_dim=16),
        "gdrive_id": "z", "preprocessing": "Crop56"}),
    ("Fetches_itself", {"model": _downloads_itself, "gdrive_id": "w"}),
    ("Ensemble", {"model": lambda: nn.Linear(2, 2), "gdrive_id": ["a", "b"]}),
])


@pytest.fixture
def small_zoo(monkeypatch, tmp_path):
    model_dicts, BenchmarkDataset, ThreatModel, _ = access._rb()
    monkeypatch.setitem(model_dicts[BenchmarkDataset("imagenet")], ThreatModel("Linf"), ENTRIES)
    monkeypatch.setenv("ROBUSTPATH_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(arch, "_MEMORY", {})
    access._build.cache_clear()
    yield tmp_path / "cache"
    access._build.cache_clear()


def _listing(capsys, *extra):
    rc = zoo_main(["list", "--dataset", "imagenet", "--threat", "Linf",
                   "--model-dir", "/nonexistent", "--json", *extra])
    groups = json.loads(capsys.readouterr().out)
    return rc, {e["name"]: e for es in groups.values() for e in es}


def test_list_offline_says_what_aligns(small_zoo, no_net, capsys):
    rc, got = _listing(capsys)
    assert rc == 0 and no_net == []  # no connection attempted anywhere
    verdict = {n: e["alignment"] for n, e in got.items()}
    assert verdict["TV_R18_pretrained"]["status"] == "whole"  # built without its download
    assert got["TV_R18_pretrained"]["params"] == 11_689_512  # resnet18's own count
    assert verdict["Timm_ViT_tiny"]["status"] == "whole"  # attention rule, checked on CPU
    swin = verdict["Timm_Swin_tiny"]
    assert swin["status"] == "partial" and swin["groups"] > 0
    kinds = {(k["cls"], k["op"]) for k in swin["left_in_place"]}
    assert ("WindowAttention", "method .reshape()") in kinds  # the precise reason, named
    assert any(k["op"] == "function roll" for k in swin["left_in_place"])  # shifted windows
    assert "attn.qkv" in swin["detail"]  # which units stay
    assert verdict["Fetches_itself"]["status"] == "refused"
    assert "network access blocked" in verdict["Fetches_itself"]["detail"]
    assert verdict["Ensemble"]["status"] == "refused" and "ensemble" in \
        verdict["Ensemble"]["detail"]


def test_verdicts_cached_per_architecture(small_zoo, no_net, capsys, monkeypatch):
    _, first = _listing(capsys)
    files = sorted(p.name for p in small_zoo.glob("*.json"))
    assert len(files) == 3 and any(f.startswith("VisionTransformer-") for f in files)

    def derive(*_a):
        raise AssertionError("verdict recomputed despite the cache")

    monkeypatch.setattr(arch, "_derive", derive)
    monkeypatch.setattr(arch, "_MEMORY", {})  # a new process: only the files remain
    access._build.cache_clear()
    rc, again = _listing(capsys)
    assert rc == 0 and no_net == []
    assert {n: e["alignment"]["status"] for n, e in again.items()} == \
        {n: e["alignment"]["status"] for n, e in first.items()}


def test_text_listing_and_skip_flag(small_zoo, no_net, capsys):
    assert zoo_main(["list", "--dataset", "imagenet", "--model-dir", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "aligns partially" in out and "WindowAttention" in out and "refused:" in out
    assert "alignment: 2 whole, 1 partial, 2 refused" in out
    assert zoo_main(["list", "--dataset", "imagenet", "--model-dir", "/nonexistent",
                     "--no-align-check"]) == 0
    assert "alignment" not in capsys.readouterr().out
    assert no_net == []


@pytest.mark.slow
def test_real_imagenet_listing_offline(no_net, capsys, monkeypatch, tmp_path):
    """RobustBench's real ImageNet L-inf list (30 entries, ~25 s on 2 busy cores cold)."""
    monkeypatch.setenv("ROBUSTPATH_ZOO_CACHE", str(tmp_path))
    rc, got = _listing(capsys)
    assert rc == 0 and no_net == []
    status = {n: e["alignment"]["status"] for n, e in got.items()}
    assert status["Standard_R50"] == "whole"  # resnet50(pretrained=True), no download
    assert status["Mo2022When_ViT-B"] == "whole"
    assert status["Liu2023Comprehensive_Swin-B"] == "partial"
    assert "WindowAttention" in got["Liu2023Comprehensive_Swin-B"]["alignment"]["detail"]
    assert status["Xu2024MIMIR_Swin-B"] == "refused"


def test_a_threat_model_robustbench_lacks_is_one_line():
    """RobustBench has no ImageNet L2 models: one line naming the threat models it has."""
    from robustpath.errors import UserError
    from robustpath.zoo import access

    with pytest.raises(UserError, match="no imagenet L2 models.*Linf"):
        access.registry("imagenet", "L2")
