"""A user's own architecture for ``--arch user_arch:TinyNet`` (tests of
robustpath.engine.endpoint_files; pytest puts tests/ on sys.path): a small CNN with BatchNorm on 28x28 grey-scale images,
built the torchvision way (a class taking ``num_classes``)."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(),
                                        nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def tiny_net():
    """The same network from a function without arguments (the other factory form)."""
    return TinyNet()
