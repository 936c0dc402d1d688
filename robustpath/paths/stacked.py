"""K networks of one architecture run as one module with ``torch.func.vmap``.

Used to evaluate several points θ(t_1..t_K) of a path at once
(``evaluate_path(t_batch=K)``): parameters and buffers of the K models are stacked
along a new leading dimension and the architecture is called once per batch through
``vmap(functional_call)``, so the K small networks become one larger computation
(batched matrix products, grouped convolutions).

Input layout: a batch of ``K * B`` examples, model-major: rows ``[k*B, (k+1)*B)``
go to model ``k``. The output is ``[K * B, classes]`` in the same order. Each output
row depends only on its own input row, so the gradient of a summed loss with respect
to the input is, row by row, the gradient each model would give on its own: an attack
on a :class:`StackedModel` with the examples repeated K times attacks the K models
independently. ``input_repeats = K`` tells :class:`robustpath.attacks.base.PGD` to draw
its random start once per distinct example and repeat it, so the stacked attack
takes the same steps as K separate attacks with the same seed.

Models must be in eval mode (BatchNorm on running statistics, recomputed per t
before stacking); the stacked state is held as buffers, so the module has no
parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from robustpath.errors import UserError


class StackedModel(nn.Module):
    """``K`` models with identical architecture and state names, evaluated at once.

    Args:
        models: the K networks (same class, same parameter and buffer names and
            shapes). Their current parameters and buffers are copied (stacked).
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise UserError("StackedModel needs at least one model")
        states = [{**dict(m.named_parameters()), **dict(m.named_buffers())} for m in models]
        names = list(states[0])
        for s in states[1:]:
            if list(s) != names or any(s[k].shape != states[0][k].shape for k in names):
                raise UserError("StackedModel needs models of one architecture")
        self.k = len(models)
        self.input_repeats = self.k
        self.robustpath_no_fuse = True   # torch.func.vmap inside: robustpath.models.fuse leaves it
        self.names = names
        for i, name in enumerate(names):
            self.register_buffer(f"s{i}", torch.stack([s[name].detach() for s in states]))
        template = copy.deepcopy(models[0]).to("meta").eval()
        object.__setattr__(self, "_template", template)  # structure only, not registered

    def state(self) -> dict[str, torch.Tensor]:
        """name -> stacked tensor ``[K, *shape]``."""
        return {name: getattr(self, f"s{i}") for i, name in enumerate(self.names)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.k:
            raise UserError(f"a StackedModel of {self.k} models needs a batch that is a multiple "
                            f"of {self.k}, got {x.shape[0]} examples")
        xs = x.reshape(self.k, x.shape[0] // self.k, *x.shape[1:])
        template = self._template

        def one(state, xb):
            return functional_call(template, state, (xb,))

        out = vmap(one)(self.state(), xs)
        return out.reshape(x.shape[0], *out.shape[2:])
