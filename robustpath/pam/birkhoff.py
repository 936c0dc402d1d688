"""Doubly stochastic matrices as Tatro et al.'s PAM handles them.

* :func:`project_ds_tatro` - their approximate projection onto the doubly stochastic
  matrices (IBM/NeuronAlignment ``utils/utils.py:262-273``): a fixed number of rounds
  of "clip to >= 0, then the closed-form projection onto {row sums = column sums = 1}".
  Ends on the affine step, so row and column sums are exact and tiny negative entries
  can remain, as theirs.
* :func:`bvn_decomposition` - a Birkhoff-von Neumann decomposition
  ``D = sum_k c_k P_k`` (c_k > 0, sum c_k = 1): repeatedly take the permutation of
  largest total weight inside the support of the remainder (Hungarian algorithm with
  entries outside the support forbidden), subtract its smallest entry times that
  permutation. Each round zeroes at least one entry, so at most n^2 rounds.
* :func:`sample_bvn` - their candidate sampler (``utils/utils.py:209-222,242-249``): keep
  the ``top`` permutations of largest coefficient, draw one with probability
  proportional to its coefficient.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def project_ds_tatro(m: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """``iters`` rounds of ReLU then the affine correction ``-(r 1^T + 1 c^T)/n + s/n^2``
    (r, c: row / column sums minus 1; s: total minus n). Same dtype and device."""
    n = m.shape[0]
    x = m
    for _ in range(int(iters)):
        x = torch.relu(x)
        r = x.sum(1, keepdim=True) - 1.0
        c = x.sum(0, keepdim=True) - 1.0
        x = x - r / n - c / n + (x.sum() - n) / n ** 2
    return x


def bvn_decomposition(d: np.ndarray, tol: float = 1e-9,
                      max_terms: int | None = None) -> list[tuple[float, np.ndarray]]:
    """``[(c_k, p_k)]`` with ``p_k`` index arrays (``P_k[i, p_k[i]] = 1``) and
    ``sum_k c_k P_k ~= d`` for a (nearly) doubly stochastic ``d`` [n, n]; entries
    below ``tol`` count as zero (negatives from :func:`project_ds_tatro` included)."""
    rest = np.array(d, dtype=np.float64, copy=True)
    rest[rest < tol] = 0.0
    n = rest.shape[0]
    out: list[tuple[float, np.ndarray]] = []
    big = 1e6
    for _ in range(max_terms or n * n):
        if rest.max() <= tol:
            break
        cost = np.where(rest > tol, -rest, big)
        rows, cols = linear_sum_assignment(cost)
        vals = rest[rows, cols]
        if vals.min() <= tol:  # no permutation inside the support is left
            break
        c = float(vals.min())
        out.append((c, cols.copy()))
        rest[rows, cols] -= c
        rest[rest < tol] = 0.0
    return out


def sample_bvn(terms: list[tuple[float, np.ndarray]], rng: np.random.Generator,
               top: int = 11) -> np.ndarray:
    """One permutation from the ``top`` largest-coefficient terms, probability
    proportional to the coefficient."""
    terms = sorted(terms, key=lambda ct: ct[0])[-int(top):]
    coeffs = np.array([c for c, _ in terms])
    cdf = np.cumsum(coeffs) / coeffs.sum()
    k = int(np.argmax(cdf >= rng.uniform(0, 1)))
    return terms[k][1]
