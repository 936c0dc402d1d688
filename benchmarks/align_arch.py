"""``python -m benchmarks.align_arch``: how long aligning two vision transformers takes.

Pairs of independently initialised models (random weights, seeds 0 and 1, eval mode,
CPU): two ``vit-tiny`` (robustpath's registry, Fashion-MNIST shapes, width 1) and two
torchvision ``vit_b_16`` (224x224, 86 M parameters). For each pair it times, separately:

* deriving the permutation spec (torch.fx trace + shape propagation + rules);
* weight matching (Ainsworth et al. 2022, coordinate descent; attention heads solved
  as blocks, :mod:`robustpath.align.blocks`), given the spec;
* applying the permutation (a deep copy with reordered weights).

It also checks the aligned copy computes the same logits as model B. Prints a
Markdown table; ``--out`` writes it to a file (``benchmarks/ALIGN_ARCH.md`` keeps the
recorded numbers with the command and the machine).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch

from robustpath import models
from robustpath.align import align, apply, permutation_spec
from robustpath.errors import UserError, cli_main
from robustpath.io.store import atomic_write_text


def _tiny(seed: int):
    torch.manual_seed(seed)
    return models.create("vit-tiny", "fashion-mnist").eval(), torch.rand(2, 1, 28, 28)


def _vit_b16(seed: int):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.vit_b_16()  # random weights; head zero-initialised
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval(), torch.rand(2, 3, 224, 224)


PAIRS = {"vit-tiny": _tiny, "vit_b_16": _vit_b16}


def time_pair(name: str) -> dict:
    (model_a, x), (model_b, _) = PAIRS[name](0), PAIRS[name](1)
    t0 = time.perf_counter()
    spec = permutation_spec(model_a, x)
    t1 = time.perf_counter()
    aligned, perm, report = align(model_a, model_b, method="weight", spec=spec)
    t2 = time.perf_counter()
    apply(model_b, perm)
    t3 = time.perf_counter()
    with torch.no_grad():
        ya, yb = aligned(x), model_b(x)
    err = float((ya - yb).abs().max() / yb.abs().max())
    return {"model": name, "params": sum(p.numel() for p in model_a.parameters()),
            "groups": len(spec.groups), "attention groups": len(spec.blocks),
            "spec s": t1 - t0, "weight matching s": report.seconds_matching,
            "apply s": t3 - t2, "align total s": t2 - t1,
            "cosine before": report.mean_before, "cosine after": report.mean_after,
            "logit rel. error": err}


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{v:,}" if isinstance(v, int) else f"{v:.3g}" if isinstance(v, float)
                 else str(v) for v in r.values()]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.align_arch", description=__doc__)
    p.add_argument("--models", default="vit-tiny,vit_b_16",
                   help=f"comma-separated: {', '.join(PAIRS)}")
    p.add_argument("--out", default=None, help="write the Markdown table here")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    bad = [n for n in names if n not in PAIRS]
    if bad:
        raise UserError(f"unknown model {bad[0]!r} (known: {', '.join(PAIRS)})")
    t0 = time.perf_counter()  # first trace pays one-time lazy imports of torch.fx & co.
    permutation_spec(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
                                         torch.nn.Linear(3, 1)), torch.rand(2, 2))
    warm = time.perf_counter() - t0
    rows = [time_pair(n) for n in names]
    text = (f"{table(rows)}\n\nCommand: `python -m benchmarks.align_arch "
            f"{shlex.join(argv if argv is not None else sys.argv[1:])}`; torch "
            f"{torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{platform.processor() or platform.machine()}; one-time warm-up (first trace, "
            f"not in the table) {warm:.1f} s.\n")
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
