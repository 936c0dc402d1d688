"""Transfer check along a whole path: a test for gradient masking.

Adversarial examples are made once against each source network (typically the
path's endpoints) by the path's own evaluation attack - the same budget, steps and
restarts as the direct attack - and evaluated, without further attack, at every t.
A transfer (black-box) attack should not beat the white-box attack on the network
itself; where it does beyond sampling error, the direct gradients are suspect:
*possible gradient masking* (Athalye et al. 2018, "Obfuscated gradients").

Each source is tested separately against the direct attack, on the same examples:
a one-sided exact McNemar test on the discordant examples
(:func:`robustpath.strong.stage.mcnemar_p`), Bonferroni-corrected over all t x sources of
the path at family-wise level ``alpha`` (default 0.05). At t = 0 the examples of
source A *are* the direct attack's, so the test cannot fire there by construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustpath import progress as progress_mod
from robustpath.attacks.base import Attack
from robustpath.attacks.metrics import per_example
from robustpath.errors import UserError
from robustpath.io.store import atomic_write_text
from robustpath.paths.evaluate import PathResult
from robustpath.strong.stage import ModelAt, PointSetup, adversarial_examples, mcnemar_p


def transfer_check(model_at: ModelAt, result: PathResult, x: torch.Tensor, y: torch.Tensor,
                   sources: dict[str, nn.Module], attack: Attack,
                   setup: PointSetup | None = None, *, alpha: float = 0.05,
                   progress: bool = True, desc: str = "transfer") -> tuple[pd.DataFrame, bool]:
    """Transfer attacks from ``sources`` evaluated at every t of ``result`` (the direct
    attack's per-example outcomes on the same ``x`` [N, C, H, W], ``y`` [N]).

    One row per t: ``direct_acc``, per source ``transfer_acc_<s>`` and ``p_<s>`` (the
    McNemar p-value), ``stronger`` (some source beats the direct attack significantly)
    and ``n``. Returns ``(frame, flagged)``.
    """
    setup = setup or PointSetup()
    if result.robust_correct.shape[1] != len(y):
        raise UserError(f"transfer check: the path result has {result.robust_correct.shape[1]} "
                        f"examples but {len(y)} were given")
    if not sources:
        raise UserError("transfer check needs at least one source model")
    adv = {name: adversarial_examples(m.to(setup.device), x, y, attack, setup.batch_size,
                                      setup.device) for name, m in sources.items()}
    level = alpha / (len(result.ts) * len(adv))
    rows, flagged = [], False
    for i, t in enumerate(progress_mod.bar(result.ts, desc=desc, unit="t", progress=progress)):
        model = setup.prepare(model_at, float(t))
        direct = np.asarray(result.robust_correct[i], dtype=bool)
        row = {"t": float(t), "direct_acc": float(direct.mean())}
        stronger = False
        for name, xa in adv.items():
            r = per_example(model, xa, y, None, batch_size=setup.batch_size, device=setup.device)
            got = r.correct.numpy()
            p = mcnemar_p(direct, got)
            row[f"transfer_acc_{name}"] = float(got.mean())
            row[f"p_{name}"] = p
            stronger |= p < level
        row["stronger"] = bool(stronger)
        row["n"] = len(y)
        flagged |= stronger
        rows.append(row)
    return pd.DataFrame(rows), flagged


def write_transfer(frame: pd.DataFrame, out_dir: str | Path, flagged: bool, *,
                   alpha: float = 0.05, title: str = "") -> None:
    """``transfer.csv`` (fractions) and ``transfer.md`` (percent, with the verdict)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "transfer.csv", frame.to_csv(index=False, float_format="%.6f"))
    test = ("one-sided exact McNemar test per source and t on the same examples, Bonferroni "
            f"over each path's tests, family-wise level {alpha:g}")
    verdict = (f"**WARNING: possible gradient masking** - at some t, adversarial examples "
               f"transferred from an endpoint beat the direct attack beyond sampling error "
               f"({test}; rows marked 'stronger'): robust accuracy there is overestimated."
               if flagged else
               f"No sign of gradient masking: no transfer attack beat the direct attack beyond "
               f"sampling error ({test}).")
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in frame.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if "acc" in c:
                cells.append(f"{100 * float(v):.1f}")
            elif isinstance(v, (bool, np.bool_)):
                cells.append("yes" if v else "")
            elif isinstance(v, (float, np.floating)):
                cells.append(f"{float(v):.3g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    head = f"{title}\n\n" if title else ""
    atomic_write_text(out_dir / "transfer.md",
                      head + verdict + "\n\nAccuracies in percent.\n\n" + "\n".join(lines) + "\n")
