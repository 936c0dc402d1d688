"""Architecture registry: every model builds for every dataset shape, logits have the
right shape, and input normalisation is a buffer inside the model."""

from __future__ import annotations

import pytest
import torch

from robustpath import data, models
from robustpath.errors import UserError
from robustpath.models.common import Normalize

# big families at small widths keep the fast tier fast; the graph is the same
WIDTH = {"vgg11": 0.125, "preact-resnet18": 0.125}


def _build(arch: str, dataset: str) -> torch.nn.Module:
    return models.create(arch, dataset, WIDTH.get(arch, 0.5))


def test_registry_lists_the_documented_families():
    assert set(models.available()) >= {"mlp", "cnn-small", "tinyten", "resnet20", "resnet32",
                                        "vgg11", "preact-resnet18"}


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10", "cifar100"])
@pytest.mark.parametrize("arch", models.available())
def test_logits_shape(arch, dataset):
    ds = data.info(dataset)
    torch.manual_seed(0)
    model = _build(arch, dataset)
    x = torch.rand(3, *ds.shape)
    out = model(x)  # train mode: BatchNorm with batch statistics
    assert out.shape == (3, ds.num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        out = model(x[:1])
    assert out.shape == (1, ds.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", models.available())
def test_normalisation_is_a_buffer_inside(arch):
    ds = data.info("cifar10")
    model = _build(arch, "cifar10")
    norm = model.normalize
    assert isinstance(norm, Normalize)
    assert torch.allclose(norm.mean.flatten(), torch.tensor(ds.mean))
    assert torch.allclose(norm.std.flatten(), torch.tensor(ds.std))
    buffers = dict(model.named_buffers())
    params = dict(model.named_parameters())
    assert "normalize.mean" in buffers and "normalize.std" in buffers
    assert not any(k.startswith("normalize.") for k in params)
    # the buffers travel with the state dict (and so with every checkpoint)
    assert "normalize.mean" in model.state_dict()
    assert model.robustpath_meta == {"arch": arch, "dataset": "cifar10",
                                     "width": WIDTH.get(arch, 0.5)}


def test_model_takes_pixels_and_normalises_them():
    model = models.create("cnn-small", "fashion-mnist").eval()
    ds = data.info("fashion-mnist")
    x = torch.rand(4, *ds.shape)
    with torch.no_grad():
        expected = model.net((x - ds.mean[0]) / ds.std[0])
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_width_scales_parameters():
    small = sum(p.numel() for p in models.create("resnet20", "cifar10", 0.5).parameters())
    big = sum(p.numel() for p in models.create("resnet20", "cifar10", 1.0).parameters())
    assert 3 * small < big  # conv weights scale with width squared


@pytest.mark.parametrize("width", [0, -1.0])
def test_bad_width_is_a_user_error(width):
    with pytest.raises(UserError, match="width"):
        models.create("cnn-small", "fashion-mnist", width)


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown architecture 'nope'"):
        models.create("nope", "fashion-mnist")
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        models.create("cnn-small", "nope")
