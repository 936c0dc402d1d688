"""Relaxed permutations for PAM: doubly stochastic matrices acting on a model's
tensors, the Euclidean projection onto the Birkhoff polytope (Dykstra), Hungarian
rounding, and a Bezier curve whose endpoint B is relaxed (see :mod:`robustpath.pam.robust`
for the algorithm and its design decisions)."""


from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustpath.align.context import solve_assignment
from robustpath.align.spec import AxisSpec, PermutationSpec
from robustpath.errors import UserError
from robustpath.paths.curves import Curve, CurvePoint


def _sum_error(x: np.ndarray) -> float:
    return float(max(np.abs(x.sum(1) - 1).max(), np.abs(x.sum(0) - 1).max()))


def project_doubly_stochastic(m: torch.Tensor, iters: int = 5000, tol: float = 1e-6) -> torch.Tensor:
    """Project a square matrix onto the doubly stochastic matrices (Birkhoff polytope).

    Dykstra's alternating projections between the affine set {X: X1 = 1, Xᵀ1 = 1} and
    the nonnegative orthant converge to the Euclidean (Frobenius) projection. The
    affine projection has a closed form (subtract ``α1ᵀ + 1βᵀ`` with
    ``α = (r - s/2n)/n``, ``β = (c - s/2n)/n``; r, c: row and column excess, s: total
    excess) and needs no Dykstra correction (its increments are normal to the set);
    the orthant does. Each iteration ends with the orthant step, so the iterate is
    always nonnegative; it stops once every row and column sum is within ``tol`` of 1
    (checked every 10 iterations). If ``iters`` iterations do not get there, the
    iterate is Sinkhorn-balanced (rows, then columns, scaled to sum 1; keeps it
    nonnegative) until they do. Float64 NumPy on the CPU (these matrices are small
    and the loop is overhead-bound: ~0.1 s for n = 128 from a noisy permutation
    matrix). Returns float64 ``[n, n]`` on ``m``'s device.
    """
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise UserError(f"doubly stochastic projection needs a square matrix, got {tuple(m.shape)}")
    x = m.detach().to("cpu", torch.float64).numpy().copy()
    if not np.all(np.isfinite(x)):
        raise UserError("relaxed permutation contains NaN/inf (diverged PAM step?)")
    n = x.shape[0]
    q = np.zeros_like(x)
    for i in range(int(iters)):
        r, c = x.sum(1) - 1.0, x.sum(0) - 1.0
        half = r.sum() / (2 * n)
        y = x - ((r - half) / n)[:, None] - ((c - half) / n)[None, :]
        x = np.maximum(y + q, 0.0)
        q += y
        q -= x
        if i % 10 == 9 and _sum_error(x) < tol:
            break
    for _ in range(int(iters)):
        if _sum_error(x) < tol:
            break
        x /= np.maximum(x.sum(1, keepdims=True), 1e-300)
        x /= np.maximum(x.sum(0, keepdims=True), 1e-300)
    return torch.from_numpy(x).to(m.device)


def permutation_matrix(p: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 0/1 matrix ``M [n, n]`` with ``M[i, p[i]] = 1`` (``M @ W == W[p]``)."""
    p = torch.as_tensor(p, dtype=torch.long)
    m = torch.zeros(len(p), len(p), dtype=dtype)
    m[torch.arange(len(p)), p] = 1.0
    return m


def round_to_permutation(s: torch.Tensor) -> torch.Tensor:
    """Nearest permutation of a relaxed matrix: ``p`` maximising ``Σ_i s[i, p[i]]``
    (Hungarian algorithm, scipy's ``linear_sum_assignment``)."""
    return solve_assignment(s)


# ---------------------------------------------------------------- relaxed application
def _relax_axis(t: torch.Tensor, ax: AxisSpec, mats: dict[str, torch.Tensor]) -> torch.Tensor:
    moved = t.movedim(ax.axis, 0)
    parts, offset = [], 0
    for s in ax.segments:
        chunk = moved[offset:offset + s.length]
        m = mats.get(s.group) if s.group is not None else None
        if m is not None:  # unit-major layout: unit u owns indices u*inner .. u*inner+inner-1
            chunk = (m.to(chunk.dtype) @ chunk.reshape(s.size, -1)).reshape(chunk.shape)
        parts.append(chunk)
        offset += s.length
    return torch.cat(parts).movedim(0, ax.axis)


def relaxed_state(model: nn.Module, spec: PermutationSpec,
                  mats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` that ``spec`` permutes, each multiplied by its groups'
    matrices along the listed axes (differentiable w.r.t. ``mats``).

    ``mats``: group -> ``[n, n]`` matrix (doubly stochastic in PAM); groups missing
    from it are left as they are. With permutation matrices
    (:func:`permutation_matrix`) the result equals
    :func:`~.permute.permuted_state` exactly. Keys as in ``model.state_dict()``.
    """
    tensors = model.state_dict(keep_vars=True)
    out: dict[str, torch.Tensor] = {}
    for ax in spec.axes:
        if ax.key not in tensors:
            raise UserError(f"model has no parameter/buffer {ax.key!r} named by the spec")
        base = out.get(ax.key)
        if base is None:
            base = tensors[ax.key].detach()
            if not base.is_floating_point():
                continue
        out[ax.key] = _relax_axis(base, ax, mats)
    return out


class _RelaxedCurve:
    """θ(t) = Σ_k w_k(t) [θ0, c_1..c_k, S·θ1]_k with fixed control points ``controls``
    and θ1 = ``model_b`` multiplied by relaxed permutations ``S``.

    ``ref`` is a curve between A and B (any permutation of B): only its ``theta_a``,
    Bernstein weights, templates and A's buffers are used.
    """

    def __init__(self, ref: Curve, model_b: nn.Module, spec: PermutationSpec):
        self.ref, self.model_b, self.spec = ref, model_b, spec
        self.b_params = {n: p.detach() for n, p in model_b.named_parameters()}
        self.batch_buffer_names = set(ref.batch_buffers_at(0.5))

    def at(self, t: float, mats: dict[str, torch.Tensor], controls: torch.Tensor):
        """``(params, buffers)`` at ``t`` for :meth:`Curve.forward_batch_stats`."""
        relaxed = relaxed_state(self.model_b, self.spec, mats)
        theta_b = torch.cat([relaxed.get(n, self.b_params[n]).reshape(-1)
                             for n in self.ref.param_names])
        points = [self.ref.theta_a, *controls.unbind(0), theta_b]
        theta = None
        for wk, pk in zip(self.ref.weights(t), points):
            if wk != 0.0:
                theta = pk * wk if theta is None else theta + pk * wk
        buffers = self.ref.batch_buffers_at(t)
        for key, value in relaxed.items():  # permuted non-BatchNorm buffers (rare)
            if key in self.batch_buffer_names and key not in self.b_params:
                a = self.ref.buffers_at(0.0, [key])[key]
                buffers[key] = a * (1 - t) + value * t
        return self.ref.unflatten(theta), buffers

    def point(self, t: float, params: dict, buffers: dict) -> CurvePoint:
        """The attack's target: θ(t) detached, BatchNorm on batch statistics."""
        pt = CurvePoint(self.ref, t, {k: v.detach() for k, v in params.items()})
        pt.point_buffers = {k: v.detach() for k, v in buffers.items()}
        return pt

    def loss(self, mats, controls, batches, ts, attack) -> float:
        """Mean cross-entropy over ``batches`` (one t each), inputs attacked if given."""
        total, n = 0.0, 0
        for (xb, yb), t in zip(batches, ts):
            with torch.no_grad():
                params, buffers = self.at(t, mats, controls)
            xa = attack(self.point(t, params, buffers), xb, yb) if attack is not None else xb
            with torch.no_grad():
                logits = self.ref.forward_batch_stats(xa, t, params, buffers)
                total += float(F.cross_entropy(logits, yb, reduction="sum"))
            n += len(yb)
        return total / max(n, 1)
