"""Align two networks, fit a Bezier curve between them, evaluate it, plot it.

The README's "Python" section is this script, shortened. Defaults: two torchvision
ResNet-18s with random weights (seeds 0 and 1) on Fashion-MNIST images repeated to
three channels (28x28: ResNet-18 runs on any input of at least 8x8 pixels). Swap in
your own trained networks: nothing below depends on ResNet-18.

    python examples/align_and_fit.py --out /tmp/example                # minutes on CPU
    python examples/align_and_fit.py --arch cnn-small --train 256 --test 64 --epochs 1 \
        --steps 1 --ts 3 --out /tmp/tiny                                # seconds (the test)

Writes ``<out>/bezier.png`` / ``.pdf`` and prints the path's barrier metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import robustpath as rp


def endpoints(arch: str, seed_a: int = 0, seed_b: int = 1):
    """Two networks of one architecture, different random initialisations."""
    nets = []
    for seed in (seed_a, seed_b):
        torch.manual_seed(seed)
        if arch == "resnet18":
            import torchvision

            nets.append(torchvision.models.resnet18(num_classes=10).eval())
        else:  # a robustpath architecture (rp.models.available())
            nets.append(rp.create_model(arch, "fashion-mnist").eval())
    return nets


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", help="resnet18 (torchvision) or e.g. cnn-small")
    p.add_argument("--train", type=int, default=2000, help="training images (curve, BN)")
    p.add_argument("--test", type=int, default=500, help="test images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="PGD steps (fit and evaluation)")
    p.add_argument("--ts", type=int, default=11, help="evaluated points along the path")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("example-out"))
    args = p.parse_args(argv)

    x_tr, y_tr = rp.load_data("fashion-mnist", train=True, subset=args.train, download=False)
    x_te, y_te = rp.load_data("fashion-mnist", train=False, subset=args.test, download=False)
    if args.arch == "resnet18":  # grey -> RGB; pixels stay in [0, 1]
        x_tr, x_te = x_tr.repeat(1, 3, 1, 1), x_te.repeat(1, 3, 1, 1)
    model_a, model_b = endpoints(args.arch)

    # 1. align B's hidden units to A's (weight matching needs no data)
    b_aligned, perm, report = rp.align_models(model_a, model_b, method="weight",
                                              example_input=x_te[:2])
    print(f"weight cosine before {report.mean_before:.3f}, after {report.mean_after:.3f}")

    # 2. a quadratic Bezier curve A -> aligned B, fitted with PGD in the loop
    attack = rp.AttackConfig(eps=0.1, steps=args.steps)  # L-inf, pixels in [0, 1]
    curve = rp.build_curve("bezier", model_a, b_aligned)
    fit = rp.fit_curve(curve, x_tr, y_tr, epochs=args.epochs, batch_size=64, attack=attack,
                       progress=False)
    print(f"curve fit: train loss {fit['train_loss']:.3f}")

    # 3. evaluate: BatchNorm re-estimated on training data at every t, seeded attack
    res = rp.evaluate_path(curve, x_te, y_te, rp.AttackConfig(eps=0.1, steps=args.steps, seed=0),
                           ts=args.ts, bn_data=(x_tr, y_tr), bn_batches=4, progress=False)
    metrics = rp.path_metrics(res, bootstrap=args.bootstrap)
    for name in ("clean_acc_min", "robust_acc_min", "robust_acc_avg", "robust_loss_barrier"):
        m = metrics[name]
        print(f"{name:20s} {m['value']:.3f}  [{m['lo']:.3f}, {m['hi']:.3f}]")

    # 4. plot clean / robust accuracy and loss along t
    # returns the matplotlib Figure (a notebook shows it) and writes .png and .pdf
    rp.plot_path({("weight", "bezier"): res}, args.out / "bezier", bootstrap=args.bootstrap)
    print("wrote", args.out / "bezier.png", args.out / "bezier.pdf")
    return metrics


if __name__ == "__main__":
    main()
