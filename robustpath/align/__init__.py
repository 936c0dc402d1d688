"""Neuron alignment: reorder model B's hidden units to match model A's.

Two networks trained from different seeds compute similar features in a different
order. Reordering the units of every hidden layer of B (and the weights that read
them) leaves B's function unchanged, and can make it much closer to A in weight space
(Tatro et al. 2020; Ainsworth et al. 2022, "Git Re-Basin").

Public API::

    spec = permutation_spec(model, example_input)     # derived from the torch.fx graph
    perm = random_permutation(model, example_input, seed=0)
    model2 = apply(model, perm)                       # deep copy, same function
    aligned_b, perm, report = align(model_a, model_b, method="activation", data=batches)
    from robustpath.pam import pam                       # PAM lives in robustpath.pam
    result = pam(model_a, model_b, x_train, y_train, PAMConfig(), start=perm)

A :class:`Permutation` is a ``dict[str, LongTensor]``: group name -> index vector ``p``
with unit ``i`` of the permuted model = unit ``p[i]`` of the original; ``perm.spec`` is
its :class:`PermutationSpec`. Methods (registry :data:`MATCHERS`): ``activation``,
``weight``, ``none``.

Beyond CNNs: multi-head attention (``nn.MultiheadAttention``, torchvision's
``VisionTransformer``, timm's ``Attention``) with heads permuted as wholes
(:mod:`.attention`, :mod:`.blocks`); ConvNeXt's functional ``layer_norm`` and
stochastic depth; grouped convolutions (RegNet: groups stay in place, each group's
output units are permuted, the input units share one order across groups). A user adds
a rule for their own layer with :func:`register_rule` (:mod:`.registry`);
``align(..., partial=True)`` (or ``permutation_spec(..., partial=True)``) leaves
operations without a rule (channel shuffles, ...) and the units they touch in place
and aligns the rest.

Modules: :mod:`.trace` (torch.fx tracing, shapes), :mod:`.rules` and :mod:`.layers`
(how each op moves a permutation), :mod:`.shapes` (reshape, transpose, indexing),
:mod:`.registry` (the rule tables), :mod:`.taps` (where units are observed),
:mod:`.attention`, :mod:`.blocks`, :mod:`.spec` (union-find over parameter axes), :mod:`.permute`
(apply/sample), :mod:`.activation` and :mod:`.weight` (matchers), :mod:`.api`. PAM
(proximal alternating minimization over permutations and a curve) is
:mod:`robustpath.pam`, so importing this package does not load the curve machinery.
"""

from robustpath.align import activation as _activation  # noqa: F401  (registers "activation")
from robustpath.align import attention as _attention  # noqa: F401  (registers the attention rules)
from robustpath.align import weight as _weight  # noqa: F401  (registers "weight")
from robustpath.align.activation import CoMoments, correlations
from robustpath.align.api import AlignReport, GroupReport, align
from robustpath.align.attention import qkv_attention
from robustpath.align.blocks import Blocks
from robustpath.align.context import MATCHERS, MatchContext, solve_assignment
from robustpath.align.permute import Permutation, apply, identity_permutation, random_permutation
from robustpath.align.registry import register_rule
from robustpath.align.spec import AxisSpec, PermutationSpec, Segment, permutation_spec
from robustpath.align.taps import Tap
from robustpath.align.weight import weight_matching, weight_similarity

__all__ = [
           "MATCHERS",
           "AlignReport",
           "AxisSpec",
           "Blocks",
           "CoMoments",
           "GroupReport",
           "MatchContext",
           "Permutation",
           "PermutationSpec",
           "Segment",
           "Tap",
           "align",
           "apply",
           "correlations",
           "identity_permutation",
           "permutation_spec",
           "qkv_attention",
           "random_permutation",
           "register_rule",
           "solve_assignment",
           "weight_matching",
           "weight_similarity",
]
