"""Groups whose units come in heads: the permutations valid for multi-head attention.

In multi-head attention (Vaswani et al. 2017) head ``h`` of the query, key and value
projections owns the ``head_dim`` consecutive units ``h * head_dim ...``; its output
``softmax(q_h k_h^T / sqrt(d)) v_h`` is read back by the output projection. The
function is unchanged when

* heads are reordered as wholes, the same way for query, key and value;
* within a head, the query/key units are reordered together (``q_h . k_h`` is a sum
  over them), and the value units (with the output projection's input) together.

A :class:`Blocks` group holds ``heads * sum(parts)`` units laid out part by part
(attention: the query/key part first, then the value part), each part head-major. A
valid permutation ``p`` (gather convention, see :mod:`.permute`) maps new head ``i``
to old head ``pi[i]`` in every part and, in part ``k``, unit ``j`` of new head ``i``
to unit ``sigma_k[i][j]`` of that old head.

:meth:`Blocks.solve` maximises ``sum_i score[i, p[i]]`` over these permutations exactly:
one Hungarian assignment per (head of A, head of B) pair and part gives the best
within-head orders and their value; a Hungarian assignment on the summed values
picks the heads (the two levels separate because each part's units stay in their
head and part).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from robustpath.errors import UserError


def solve_assignment(score: torch.Tensor) -> torch.Tensor:
    """Hungarian assignment maximising ``sum_i score[i, p[i]]`` (scipy's
    ``linear_sum_assignment``); returns ``p`` as a LongTensor."""
    s = score.detach().to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(s)):
        raise UserError("similarity matrix contains NaN/inf (diverged weights or activations?)")
    rows, cols = linear_sum_assignment(s, maximize=True)
    p = torch.empty(len(rows), dtype=torch.long)
    p[torch.from_numpy(rows)] = torch.from_numpy(cols).long()
    return p


@dataclass(frozen=True)
class Blocks:
    """``heads`` heads; part ``k`` gives every head ``parts[k]`` units."""

    heads: int
    parts: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.heads * sum(self.parts)

    def offsets(self) -> list[int]:
        out, o = [], 0
        for d in self.parts:
            out.append(o)
            o += self.heads * d
        return out

    def compose(self, heads: torch.Tensor, within: list[torch.Tensor]) -> torch.Tensor:
        """The permutation moving new head ``i`` to old head ``heads[i]``, with
        ``within[k][i]`` the order of part ``k``'s units inside it (``[heads, d_k]``)."""
        pieces = []
        for off, d, w in zip(self.offsets(), self.parts, within):
            pieces.append((off + heads.view(-1, 1) * d + w).reshape(-1))
        return torch.cat(pieces)

    def random(self, gen: torch.Generator) -> torch.Tensor:
        """A uniformly random valid permutation."""
        heads = torch.randperm(self.heads, generator=gen)
        within = [torch.stack([torch.randperm(d, generator=gen) for _ in range(self.heads)])
                  for d in self.parts]
        return self.compose(heads, within)

    def check(self, p: torch.Tensor) -> str | None:
        """Why ``p`` (already a permutation of ``size`` units) is not valid, or None."""
        heads = None
        for off, d in zip(self.offsets(), self.parts):
            local = p[off:off + self.heads * d] - off
            if local.min() < 0 or local.max() >= self.heads * d:
                return "moves units between the query/key and value parts"
            h = (local // d).view(self.heads, d)
            if not bool((h == h[:, :1]).all()):
                return "splits a head"
            if heads is None:
                heads = h[:, 0]
            elif not torch.equal(heads, h[:, 0]):
                return "orders the heads differently in the query/key and value parts"
        return None

    def solve(self, score: torch.Tensor) -> torch.Tensor:
        """The valid ``p`` maximising ``sum_i score[i, p[i]]`` (``score``: ``[size, size]``,
        only its within-part blocks are read)."""
        score = score.detach().to("cpu", torch.float64)
        h = self.heads
        value = torch.zeros(h, h, dtype=torch.float64)
        inner: list[list[list[torch.Tensor]]] = []
        for off, d in zip(self.offsets(), self.parts):
            s = score[off:off + h * d, off:off + h * d].reshape(h, d, h, d).permute(0, 2, 1, 3)
            orders = []
            for a in range(h):
                row = []
                for b in range(h):
                    q = solve_assignment(s[a, b])
                    value[a, b] += s[a, b][torch.arange(d), q].sum()
                    row.append(q)
                orders.append(row)
            inner.append(orders)
        heads = solve_assignment(value)
        within = [torch.stack([orders[a][int(heads[a])] for a in range(h)]) for orders in inner]
        return self.compose(heads, within)


__all__ = ["Blocks"]
