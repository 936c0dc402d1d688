"""Benchmark the paths between two models of your own, in one call: ``rp.benchmark``.

Notebook-style (``# %%`` cells run one by one in VS Code / Jupytext). Two small
torchvision-style networks (a class taking ``num_classes``, pixels in [0, 1] in) are
adversarially trained for a moment with plain PyTorch - bring your own trained models
instead - then ``rp.benchmark`` aligns them, fits curves with PGD in the loop, evaluates
clean and robust accuracy along every path and writes a run folder with ``report.html``.

    python examples/benchmark_two_models.py                       # a few minutes on CPU
    python examples/benchmark_two_models.py --tiny --out /tmp/b   # seconds (the test)
"""

# %%
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import robustpath as rp


class SmallNet(nn.Module):
    """A torchvision-style CNN for 28x28 grey-scale images (logits [N, num_classes])."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def adversarially_trained(seed: int, x, y, eps: float, epochs: int) -> nn.Module:
    """PGD training (Madry et al. 2018) in plain PyTorch: any training of yours will do."""
    torch.manual_seed(seed)
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    attack = rp.build_attack(rp.AttackConfig(eps=eps, steps=3))
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(128):
            model.eval()  # the attack runs on the model in eval mode
            xa = attack(model, x[i], y[i])
            model.train()
            loss = F.cross_entropy(model(xa), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; the test)")
    p.add_argument("--out", default=None, help="run folder (default runs/benchmark-...)")
    args = p.parse_args(argv)
    n_train, epochs = (300, 1) if args.tiny else (5000, 3)

    # %% two models of one architecture, trained from different seeds
    x, y = rp.load_data("fashion-mnist", train=True, subset=n_train)
    model_a = adversarially_trained(0, x, y, eps=0.1, epochs=epochs)
    model_b = adversarially_trained(1, x, y, eps=0.1, epochs=epochs)

    # %% one call: a run folder with records.csv, tables/, plots/ and report.html
    sizes = (dict(train_subset=300, test_subset=60, curve_epochs=1, t_points=3, bn_batches=1,
                  bootstrap=20, eval_steps=1, train_steps=1, refine_rounds=0, plane_grid=0,
                  strong=False, align=["none", "weight"])
             if args.tiny else dict(train_subset=5000, test_subset=500, align=["none", "weight"]))
    result = rp.benchmark(model_a, model_b, dataset="fashion-mnist", threat_model="Linf",
                          eps=0.1, out=args.out, progress=not args.tiny, **sizes)
    print(result)
    print(result.summary[["align", "curve"]].to_string(index=False))
    return result


if __name__ == "__main__":
    main()
