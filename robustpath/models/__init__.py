"""Architecture registry. ``create(name, dataset="fashion-mnist", width=1.0)``.

Every model starts with a :class:`Normalize` layer holding the dataset's mean/std as
buffers, so inputs are pixels in [0, 1]. Input channels, number of classes and the
statistics come from the dataset (:mod:`robustpath.data`). Registered families:
``mlp``, ``cnn-small``, ``tinyten``, ``resnet20``, ``resnet32``, ``vgg11``,
``preact-resnet18``. ``width`` multiplies every hidden width.
"""

# the package's API (robustpath.models.create etc.) and the builders, which register
# themselves in robustpath.models.registry.MODELS on import
from robustpath.models import cnn, resnet, vgg, vit  # noqa: E402,F401  (registration)
from robustpath.models.registry import MODELS, available, create, register  # noqa: F401
