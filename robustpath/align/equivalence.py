"""Function-equivalence checks: an aligned network must compute the network it came
from, and a path's endpoints must compute the models it joins.

A permutation of hidden units changes no output (Entezari et al. 2021; Ainsworth et
al. 2022); float32 sums in another order move logits by ~1e-6 relative. A wrong
permutation spec moves them by O(1). :func:`check_same_function` measures the largest
absolute logit difference on a test batch and raises a one-line error above
``rtol * max(1, max |logits|)`` (default ``rtol`` 1e-4).
"""

from __future__ import annotations

import torch
from torch import nn

from robustpath.attacks.base import eval_mode
from robustpath.errors import UserError

RTOL = 1e-4
EXAMPLES = 256


class EquivalenceError(UserError):
    """Two networks that must compute the same function do not."""


@torch.no_grad()
def logit_difference(ref: nn.Module, model: nn.Module, x: torch.Tensor,
                     batch_size: int = 256) -> tuple[float, float]:
    """``(max |logits_ref - logits_model|, max |logits_ref|)`` over ``x`` [N, C, H, W]."""
    diff, scale = 0.0, 0.0
    dev = next(iter(ref.parameters()), torch.empty(0)).device
    with eval_mode(ref), eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev)
            a = ref(xb).double()
            b = model(xb.to(next(iter(model.parameters()), xb).device)).double().to(a.device)
            diff = max(diff, float((a - b).abs().max()))
            scale = max(scale, float(a.abs().max()))
    return diff, scale


def check_same_function(ref: nn.Module, model: nn.Module, x: torch.Tensor, *, what: str,
                        rtol: float = RTOL) -> dict:
    """Raise :class:`EquivalenceError` unless ``model`` computes ``ref``'s logits on ``x``
    to ``rtol`` (relative to the logits' scale); returns the record
    ``{"max_abs_logit_diff", "max_abs_logit", "examples", "rtol"}``."""
    x = x[:EXAMPLES]
    diff, scale = logit_difference(ref, model, x)
    rec = {"max_abs_logit_diff": diff, "max_abs_logit": scale, "examples": int(len(x)),
           "rtol": rtol}
    if not diff <= rtol * max(1.0, scale):  # also catches NaN
        raise EquivalenceError(f"{what}: logits differ by up to {diff:.3g} (tolerance "
                               f"{rtol * max(1.0, scale):.3g}) on {len(x)} test examples; the "
                               "two networks do not compute the same function")
    return rec
