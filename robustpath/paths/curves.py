"""Curves θ(t), t in [0, 1], between two networks of the same architecture.

Mode connectivity (Garipov et al. 2018; Tatro et al. 2020) fits a curve between
two trained networks θ0 = model A and θ1 = model B such that every point is a good
network. The reference code writes a "curve twin" of every layer type; here a curve
works for *any* ``nn.Module``: it computes the parameters at t and runs the model
with :func:`torch.func.functional_call` on a weight-less template.

Families (registry :data:`CURVES`, factory :func:`build_curve`), with control
points c_1..c_k (``k = bends``) between the fixed endpoints:

* ``line``      - θ(t) = (1 - t) θ0 + t θ1; no trainable points (``bends`` ignored).
* ``bezier``    - Bezier curve of degree k + 1 (Bernstein polynomials); the default
  ``bends=1`` is Garipov's / Tatro's quadratic Bezier
  θ(t) = (1-t)² θ0 + 2t(1-t) c + t² θ1.
* ``polychain`` - piecewise linear through θ0, c_1, ..., c_k, θ1 at equally spaced
  t = 0, 1/(k+1), ..., 1 (Garipov's polygonal chain; ``bends=1``: one bend at t=½).

Storage: the endpoints' parameters are flattened into two fixed buffers
``theta_a`` / ``theta_b`` of shape ``[P]`` and the control points form one
``nn.Parameter`` ``controls`` of shape ``[bends, P]`` (all parameters must share
one floating dtype). Control point i starts on the straight line at
s = i / (bends + 1), where both families coincide with the line exactly.

Only parameters are curved. Buffers: floating ones (BatchNorm running statistics,
normalisation constants) are linearly interpolated between the endpoints, which
is *meaningless* for BatchNorm statistics at interior t until they are recomputed
(:func:`robustpath.paths.bn.recompute_bn`); non-floating ones (``num_batches_tracked``)
are copied from endpoint A.
"""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from robustpath.errors import UserError
from robustpath.io.store import load_checkpoint, save_checkpoint
from robustpath.models.fuse import fast_view
from robustpath.paths.bn import batch_stats_copy
from robustpath.registry import Registry

CURVES: Registry[type[Curve]] = Registry("curve")


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise :class:`UserError` unless both models have the same parameter and buffer
    names, shapes and dtypes (the condition for a curve between them)."""
    for what, get in (("parameter", nn.Module.named_parameters),
                      ("buffer", nn.Module.named_buffers)):
        a = {n: (tuple(t.shape), t.dtype) for n, t in get(model_a)}
        b = {n: (tuple(t.shape), t.dtype) for n, t in get(model_b)}
        if a.keys() != b.keys():
            diff = sorted(a.keys() ^ b.keys())
            raise UserError(f"endpoint models differ: {what} names {diff[:3]} are in only one "
                            "of them (a curve needs two models of the same architecture)")
        for name, spec in a.items():
            if b[name] != spec:
                raise UserError(f"endpoint models differ: {what} {name!r} is {spec[0]} "
                                f"{spec[1]} in A but {b[name][0]} {b[name][1]} in B")


class _TensorList(nn.Module):
    """Fixed tensors registered as buffers ``t0, t1, ...`` so ``.to()`` moves them."""

    def __init__(self, tensors: list[torch.Tensor]):
        super().__init__()
        self.n = len(tensors)
        for i, t in enumerate(tensors):
            self.register_buffer(f"t{i}", t.detach().clone())

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f"t{i}") for i in range(self.n)]


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Curve(nn.Module):
    """Base class: a curve between ``model_a`` (t=0) and ``model_b`` (t=1).

    Subclasses define :meth:`weights`, the coefficients of
    ``[θ0, c_1, ..., c_k, θ1]`` at t (they sum to 1; t=0 gives ``[1, 0, ..., 0]``
    and t=1 ``[0, ..., 0, 1]``, so the endpoints are reproduced bit for bit).

    The models are copied; later changes to ``model_a`` / ``model_b`` do not affect
    the curve. ``curve.train()`` / ``curve.eval()`` set the mode that
    :meth:`forward` runs the template in.
    """

    kind = "?"
    #: registry metadata: control points fitted with PGD in the loop (a line has none)
    fitted = True

    def __init__(self, model_a: nn.Module, model_b: nn.Module, bends: int = 1):
        super().__init__()
        check_same_architecture(model_a, model_b)
        if int(bends) < 0:
            raise UserError(f"a curve needs bends >= 0, got {bends}")
        self.bends = int(bends)
        named = list(model_a.named_parameters())
        if not named:
            raise UserError("the endpoint models have no parameters to connect")
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise UserError("curves need all parameters in one floating dtype, "
                            f"got {sorted(map(str, dtypes))}")
        params_b = dict(model_b.named_parameters())
        self.param_names = [n for n, _ in named]
        self.param_shapes = [tuple(p.shape) for _, p in named]
        self.param_numels = [p.numel() for _, p in named]
        self.register_buffer("theta_a",
                             torch.cat([p.detach().reshape(-1) for _, p in named]).clone())
        self.register_buffer("theta_b", torch.cat(
            [params_b[n].detach().reshape(-1).to(self.theta_a.device) for n in self.param_names]))
        n = self.bends + 1
        init = [self.theta_a * (1 - i / n) + self.theta_b * (i / n) for i in range(1, n)]
        self.controls = nn.Parameter(
            torch.stack(init) if init else self.theta_a.new_zeros(0, self.theta_a.numel()))

        bufs_a, bufs_b = dict(model_a.named_buffers()), dict(model_b.named_buffers())
        self.float_buffer_names = [k for k, v in bufs_a.items() if v.is_floating_point()]
        self.fixed_buffer_names = [k for k, v in bufs_a.items() if not v.is_floating_point()]
        self.buffers_a = _TensorList([bufs_a[k] for k in self.float_buffer_names])
        self.buffers_b = _TensorList(
            [bufs_b[k].to(bufs_a[k].device) for k in self.float_buffer_names])
        self.fixed_buffers = _TensorList([bufs_a[k] for k in self.fixed_buffer_names])

        # Structure only (meta device, no memory): every tensor is supplied per call.
        template = copy.deepcopy(model_a).to("meta")
        batch_template = batch_stats_copy(template)
        keep = {n for n, _ in batch_template.named_buffers()}
        # Hidden from nn.Module registration: the templates hold no state of the curve.
        object.__setattr__(self, "_template", template)
        object.__setattr__(self, "_batch_template", batch_template)
        object.__setattr__(self, "_batch_buffer_names", [n for n in bufs_a if n in keep])
        self.meta = dict(getattr(model_a, "robustpath_meta", {}) or {})
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ family
    def weights(self, t: float) -> list[float]:
        """Coefficients of ``[θ0, c_1, ..., c_bends, θ1]`` at ``t`` (length bends + 2)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ parameters
    def flat_at(self, t: float) -> torch.Tensor:
        """θ(t) as one flat vector ``[P]``, differentiable w.r.t. :attr:`controls`.

        Terms with weight 0 are skipped, so ``flat_at(0)`` / ``flat_at(1)`` are exact
        copies of the endpoints.
        """
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise UserError(f"t must lie in [0, 1], got {t}")
        w = self.weights(t)
        points = [self.theta_a, *self.controls.unbind(0), self.theta_b]
        theta = None
        for wk, pk in zip(w, points):
            if wk == 0.0:
                continue
            theta = pk * wk if theta is None else torch.add(theta, pk, alpha=wk)
        return theta

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``[P]`` vector into the model's named parameter shapes (views)."""
        return {name: chunk.view(shape) for name, shape, chunk in
                zip(self.param_names, self.param_shapes, flat.split(self.param_numels))}

    def params_at(self, t: float) -> dict[str, torch.Tensor]:
        """Parameters at ``t``: name -> tensor, differentiable w.r.t. the control points."""
        return self.unflatten(self.flat_at(t))

    def buffers_at(self, t: float, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Buffers at ``t`` (fresh tensors): floating ones linearly interpolated between
        the endpoints (meaningless BatchNorm statistics at interior t until
        recomputed), non-floating ones (``num_batches_tracked``) copied from A.
        ``names`` restricts the result to those buffers."""
        t = float(t)
        wanted = None if names is None else set(names)
        out = {}
        pairs = zip(self.float_buffer_names, self.buffers_a.tensors(), self.buffers_b.tensors())
        for name, a, b in pairs:
            if wanted is None or name in wanted:
                if t in (0.0, 1.0):
                    out[name] = (a if t == 0.0 else b).clone()
                else:
                    out[name] = a * (1 - t) + b * t
        for name, v in zip(self.fixed_buffer_names, self.fixed_buffers.tensors()):
            if wanted is None or name in wanted:
                out[name] = v.clone()
        return out

    # ------------------------------------------------------------------ networks
    def forward(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Logits of the network at ``t`` for ``x`` (pixels in [0, 1]).

        Runs the template in the curve's train/eval mode with :meth:`params_at` and
        :meth:`buffers_at`: in eval mode BatchNorm uses the interpolated running
        statistics, in train mode the batch's (updates go to throw-away copies).
        """
        return functional_call(self._template, {**self.params_at(t), **self.buffers_at(t)}, (x,))

    def forward_batch_stats(self, x: torch.Tensor, t: float,
                            params: dict[str, torch.Tensor] | None = None,
                            buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits at ``t`` with every BatchNorm normalising by the batch's statistics,
        whatever the mode (:func:`robustpath.paths.bn.batch_stats_copy`). ``params``
        (default :meth:`params_at`) and ``buffers`` (default :meth:`batch_buffers_at`)
        let a caller reuse one θ(t) for several calls. Runs on
        :func:`robustpath.models.fuse.fast_view` of the template (ReLU after max pooling,
        NHWC activations on CPU: the same function, faster)."""
        params = self.params_at(t) if params is None else params
        buffers = self.batch_buffers_at(t) if buffers is None else buffers
        # tie_weights=False: the view holds each fused conv / BatchNorm under two names
        # (its own module and the folded pair's child); tying them made functional_call
        # restore one name with θ(t) itself, which leaked into the template and changed
        # its tensors' identity, so the cached view was rebuilt at every call. Both names
        # are one module attribute, so setting one name reaches both.
        return functional_call(fast_view(self._batch_template), {**params, **buffers}, (x,),
                               tie_weights=False)

    def batch_buffers_at(self, t: float) -> dict[str, torch.Tensor]:
        """The buffers that :meth:`forward_batch_stats` needs (all but BatchNorm's)."""
        return self.buffers_at(t, self._batch_buffer_names)

    def point(self, t: float, params: dict[str, torch.Tensor] | None = None) -> CurvePoint:
        """θ(t) as a module with batch-statistics BatchNorm and detached parameters,
        the target of attacks during curve training."""
        params = self.params_at(t) if params is None else params
        return CurvePoint(self, t, {k: v.detach() for k, v in params.items()})

    def model_at(self, t: float) -> nn.Module:
        """A standalone copy of the architecture holding θ(t) (detached) and
        :meth:`buffers_at` ``(t)``, on the curve's device, in eval mode.

        For interior t with BatchNorm, call :func:`robustpath.paths.bn.recompute_bn` on it
        before evaluating it.
        """
        with torch.no_grad():
            values = {**self.params_at(t), **self.buffers_at(t)}
            model = copy.deepcopy(self._template).to_empty(device=self.theta_a.device)
            for name, value in values.items():
                owner, _, attr = name.rpartition(".")
                getattr(model.get_submodule(owner), attr).copy_(value)
        return model.eval()

    def train(self, mode: bool = True) -> Curve:
        super().train(mode)
        self._template.train(mode)
        self._batch_template.train(mode)
        return self

    # ------------------------------------------------------------------ bookkeeping
    def fingerprint(self) -> str:
        """Short hash of the endpoints' parameters: identifies which pair a curve
        (e.g. aligned or unaligned B) was fitted between."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.theta_a, self.theta_b)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "bends": self.bends, "model": self.meta,
                "num_params": int(self.theta_a.numel()), "endpoints": self.fingerprint()}

    def extra_repr(self) -> str:
        return f"kind={self.kind}, bends={self.bends}, params={self.theta_a.numel()}"


class CurvePoint(nn.Module):
    """The network at a fixed t with fixed (detached) parameters and BatchNorm on
    batch statistics, callable as ``point(x)``. Switching it to eval mode (as every
    attack does) does not change how BatchNorm normalises."""

    def __init__(self, curve: Curve, t: float, params: dict[str, torch.Tensor]):
        super().__init__()
        object.__setattr__(self, "_curve", curve)
        self.t = float(t)
        self.point_params = params
        self.point_buffers = curve.batch_buffers_at(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._curve.forward_batch_stats(x, self.t, self.point_params, self.point_buffers)


@CURVES.register("line")
class Line(Curve):
    """θ(t) = (1 - t) θ0 + t θ1. Has no control points (``controls`` is an empty,
    frozen ``[0, P]`` tensor); ``bends`` is ignored."""

    kind = "line"
    fitted = False  # registry metadata: nothing to fit, so its key has no training spec

    def __init__(self, model_a: nn.Module, model_b: nn.Module, bends: int = 0):
        super().__init__(model_a, model_b, 0)
        # Empty [0, P] control tensor, frozen: ``any(p.requires_grad ...)`` is False.
        self.controls.requires_grad_(False)

    def weights(self, t: float) -> list[float]:
        return [1.0 - t, t]


@CURVES.register("bezier")
class Bezier(Curve):
    """Bezier curve of degree n = bends + 1 (Garipov et al. 2018; Tatro et al. 2020
    use n = 2): θ(t) = Σ_k C(n, k) t^k (1 - t)^(n-k) p_k with p_0 = θ0, p_n = θ1."""

    kind = "bezier"

    def weights(self, t: float) -> list[float]:
        n = self.bends + 1
        return [math.comb(n, k) * t ** k * (1.0 - t) ** (n - k) for k in range(n + 1)]


@CURVES.register("polychain")
class PolyChain(Curve):
    """Polygonal chain θ0 -> c_1 -> ... -> c_k -> θ1 with node i at t = i / (k + 1)
    (Garipov et al. 2018, k = 1: one bend at t = ½)."""

    kind = "polychain"

    def weights(self, t: float) -> list[float]:
        n = self.bends + 1
        seg = min(int(t * n), n - 1)
        s = t * n - seg
        w = [0.0] * (n + 1)
        w[seg], w[seg + 1] = 1.0 - s, s
        return w


def build_curve(kind: str, model_a: nn.Module, model_b: nn.Module, bends: int = 1) -> Curve:
    """Build curve family ``kind`` (``line``, ``bezier``, ``polychain``) between two
    models of one architecture, control points on the straight line. Raises
    :class:`UserError` for unknown kinds or mismatched parameter names/shapes."""
    return CURVES.get(kind)(model_a, model_b, bends)


def available() -> list[str]:
    return CURVES.names()


# ---------------------------------------------------------------------- persistence
def save_curve(path: str | Path, curve: Curve, meta: dict[str, Any] | None = None) -> None:
    """Write the control points to ``<path>.safetensors`` and the curve's description
    (kind, bends, architecture, endpoint fingerprint) plus ``meta`` to ``<path>.json``.
    The endpoints are not stored: :func:`load_curve` takes them."""
    save_checkpoint(path, {"controls": curve.controls.detach()},
                    {"curve": curve.describe(), **(meta or {})})


def load_curve(path: str | Path, model_a: nn.Module, model_b: nn.Module,
               device: str | torch.device = "cpu") -> tuple[Curve, dict[str, Any]]:
    """Rebuild a curve saved by :func:`save_curve` between ``model_a`` and ``model_b``.

    Returns ``(curve, meta)``. Raises :class:`UserError` when the endpoints are not
    the ones the curve was fitted between (e.g. unaligned B for an aligned curve).
    """
    tensors, meta = load_checkpoint(path, device)
    desc = meta.get("curve") or {}
    if "kind" not in desc or "controls" not in tensors:
        raise UserError(f"{path} is not a saved curve")
    curve = build_curve(desc["kind"], model_a, model_b, desc.get("bends", 1)).to(device)
    if desc.get("endpoints") not in (None, curve.fingerprint()):
        raise UserError(f"curve {path} was fitted between other endpoint models "
                        f"(fingerprint {desc['endpoints']}, given {curve.fingerprint()})")
    if tuple(tensors["controls"].shape) != tuple(curve.controls.shape):
        got, want = tuple(tensors["controls"].shape), tuple(curve.controls.shape)
        raise UserError(f"curve {path} has control points of shape {got}, expected {want}")
    with torch.no_grad():
        curve.controls.copy_(tensors["controls"])
    return curve, meta
