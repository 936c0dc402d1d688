"""Architecture registry. ``create(name, dataset="fashion-mnist", width=1.0)``.

Every model starts with a :class:`Normalize` layer holding the dataset's mean/std as
buffers, so inputs are pixels in [0, 1]. Input channels, number of classes and the
statistics come from the dataset (:mod:`robustpath.data`). Registered families:
``mlp``, ``cnn-small``, ``tinyten``, ``resnet20``, ``resnet32``, ``vgg11``,
``preact-resnet18``. ``width`` multiplies every hidden width.
"""

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


from robustpath.models import cnn, resnet, vgg, vit  # noqa: E402,F401  (registration side effects)

__all__ = ["MODELS", "create", "available", "register", "Normalize"]
