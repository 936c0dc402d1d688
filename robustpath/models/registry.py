"""The architecture registry: ``MODELS``, :func:`register` (a builder decorator),
:func:`create` (an architecture for a dataset's shapes, input normalisation inside) and
:func:`available`. The builders live in :mod:`robustpath.models.cnn`, ``resnet``, ``vgg``
and ``vit`` and register themselves on import of :mod:`robustpath.models`."""

from __future__ import annotations

import torch.nn as nn

from robustpath.data import info as dataset_info
from robustpath.errors import UserError
from robustpath.models.common import Normalize
from robustpath.registry import Registry

MODELS: Registry = Registry("architecture")


def register(name: str):
    """Decorator: register a builder ``fn(channels, size, num_classes, width) -> nn.Module``."""
    return MODELS.register(name)


def create(name: str, dataset: str = "fashion-mnist", width: float = 1.0) -> nn.Module:
    """Build architecture ``name`` for ``dataset``'s shapes, with input normalisation inside.

    Returns ``nn.Sequential(Normalize, body)``; logits have shape ``[N, num_classes]``.
    """
    builder = MODELS.get(name)
    ds = dataset_info(dataset)
    if not width or width <= 0:
        raise UserError(f"width must be > 0, got {width}")
    body = builder(ds.channels, ds.size, ds.num_classes, float(width))
    model = nn.Sequential()
    model.add_module("normalize", Normalize(ds.mean, ds.std))
    model.add_module("net", body)
    model.robustpath_meta = {"arch": name, "dataset": dataset, "width": float(width)}
    return model


def available() -> list[str]:
    return MODELS.names()
