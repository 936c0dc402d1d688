"""``align(model_a, model_b, method=...)``: the one entry point, and its report."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from robustpath.align.activation import check_compatible, correlations
from robustpath.align.context import MATCHERS, MatchContext
from robustpath.align.permute import Permutation, apply
from robustpath.align.spec import PermutationSpec, permutation_spec
from robustpath.align.weight import weight_similarity
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.data import info as dataset_info
from robustpath.errors import UserError


@dataclass
class GroupReport:
    """One permutation group: its size and the mean matched similarity of its units
    before (identity) and after alignment."""

    size: int
    before: float | None = None
    after: float | None = None


@dataclass
class AlignReport:
    """What ``align`` did. ``measure``: ``correlation`` (mean Pearson correlation of
    matched units' activations, Tatro et al.'s figure; computed whenever data is given)
    or ``weight_cosine`` (mean cosine similarity of matched units' weights, when no data
    is given). ``mean_before`` / ``mean_after`` average the groups, unweighted.
    ``seconds``: wall time of the whole call; ``seconds_statistics``: collecting
    activations (0 when unused); ``seconds_matching``: the matcher including statistics.
    Partial alignment: ``kept`` lists the groups named in ``partial`` (left in place),
    ``left_in_place`` the operations that could not be permuted (``where``, ``reason``,
    ``units``: the layers whose units therefore stay in place; ``spec.fixed``).
    """

    method: str
    measure: str
    inputs: str | None
    num_samples: int
    groups: dict[str, GroupReport] = field(default_factory=dict)
    mean_before: float | None = None
    mean_after: float | None = None
    seconds: float = 0.0
    seconds_statistics: float = 0.0
    seconds_matching: float = 0.0
    kept: list[str] = field(default_factory=list)
    left_in_place: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        return asdict(self)

    def _summary(self) -> str:
        def num(v):
            return "n/a" if v is None else f"{v:.3f}"

        kept = f", {len(self.kept)} kept" if self.kept else ""
        fixed = f", {len(self.left_in_place)} left in place" if self.left_in_place else ""
        return (f"method={self.method}, {self.measure} {num(self.mean_before)} -> "
                f"{num(self.mean_after)} over {len(self.groups)} groups{kept}{fixed}, "
                f"{self.seconds:.2f} s")

    def __repr__(self) -> str:  # one short line, not the 2,000-character field dump
        return f"AlignReport({self._summary()})"

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(str(name))}</td><td>{g.size}</td>"
            f"<td>{'' if g.before is None else f'{g.before:.3f}'}</td>"
            f"<td>{'' if g.after is None else f'{g.after:.3f}'}</td></tr>"
            for name, g in self.groups.items())
        return (f"<p><b>AlignReport</b>: {html.escape(self._summary())}</p><table><thead><tr>"
                f"<th>group</th><th>units</th><th>{self.measure} before</th><th>after</th>"
                f"</tr></thead><tbody>{rows}</tbody></table>")


def _example_input(model_a: nn.Module, data, example_input):
    if example_input is not None:
        return example_input, data
    x = getattr(data, "x", None)  # robustpath.data.Batches
    if isinstance(x, torch.Tensor) and len(x):
        return x[:2], data
    if data is not None:
        it = iter(data)
        first = next(it, None)
        if first is not None:
            xb = first[0] if isinstance(first, (tuple, list)) else first
            return xb[:2], itertools.chain([first], it)
    meta = getattr(model_a, "robustpath_meta", None)
    if meta:  # models.create() records the dataset: its shape is enough for tracing
        return torch.rand(2, *dataset_info(meta["dataset"]).shape), data
    raise UserError("align needs data or example_input= to trace the model")


def _resolve_attack(inputs: str, attack):
    if inputs not in ("clean", "adv"):
        raise UserError(f"inputs must be 'clean' or 'adv', got {inputs!r}")
    if inputs == "clean":
        return None
    if attack is None:
        # PGD L-inf 8/255, 5 steps of 2/255 (Tatro et al.), seeded: unseeded random starts
        # would make the permutation depend on the process's random-number history
        attack = AttackConfig(seed=0)
    if isinstance(attack, AttackConfig):
        attack = build_attack(attack)
    if not callable(attack):
        raise UserError("attack must be an AttackConfig or a callable attack(model, x, y)")
    return attack


def align(model_a: nn.Module, model_b: nn.Module, method: str = "activation",
          data: Iterable | None = None, inputs: str = "clean",
          attack: AttackConfig | Callable | None = None, max_batches: int | None = None, *,
          pre_activation: bool = False, seed: int = 0, example_input: torch.Tensor | None = None,
          spec: PermutationSpec | None = None,
          partial: bool | Iterable[str] = False) -> tuple[nn.Module, Permutation, AlignReport]:
    """Permute ``model_b``'s hidden units to match ``model_a``'s.

    Args:
        model_a, model_b: the same architecture; neither is modified.
        method: ``activation`` (Tatro et al. 2020; needs ``data``), ``weight`` (Git
            Re-Basin weight matching; no data needed) or ``none`` (identity baseline).
        data: iterable of ``(x, y)`` batches, pixels in [0, 1] (e.g.
            ``robustpath.data.Batches``); used for activation statistics and, for any
            method, for the correlation figures of the report.
        inputs: ``clean`` or ``adv`` (adversarial examples generated against each model
            on its own).
        attack: ``AttackConfig`` or ``attack(model, x, y)``; default for ``adv``: PGD
            L-inf eps 8/255, 5 steps of 2/255, random start seeded with 0.
        max_batches: use at most this many batches of ``data``.
        pre_activation: match units before the nonlinearity (default: after).
        seed: order of weight matching's coordinate-descent sweeps.
        example_input: batch used to trace the model (default: 2 images of ``data``).
        spec: a precomputed :func:`permutation_spec` of the architecture.
        partial: ``True``: operations without a permutation rule leave their inputs and
            parameters in place instead of refusing the model, and everything else is
            aligned; a list of group names (see ``spec.describe()``): also leave those
            groups in place. Recorded in ``report.left_in_place`` / ``report.kept``.

    Returns:
        ``(aligned_b, perm, report)``: ``aligned_b = apply(model_b, perm)`` computes the
        same function as ``model_b``; ``perm`` is a :class:`Permutation`; ``report`` an
        :class:`AlignReport` with per-group similarity before/after and timings.
    """
    t0 = time.perf_counter()
    matcher = MATCHERS.get(method)
    attack_fn = _resolve_attack(inputs, attack)
    check_compatible(model_a, model_b)
    keep = frozenset() if isinstance(partial, bool) else frozenset(partial)
    if spec is None:  # a given spec needs no example input
        example, data = _example_input(model_a, data, example_input)
        spec = permutation_spec(model_a, example.to(next(model_a.parameters()).device),
                                partial=partial is not False)
    unknown = sorted(keep - set(spec.groups))
    if unknown:
        raise UserError(f"partial names unknown permutation group(s) {', '.join(unknown)} "
                        f"(groups: {', '.join(spec.groups)})")
    ctx = MatchContext(model_a, model_b, spec, data, inputs, attack_fn, max_batches,
                       pre_activation, seed, keep)
    t1 = time.perf_counter()
    found = matcher(ctx)
    found.update({g: torch.arange(spec.groups[g]) for g in keep})
    perm = Permutation(spec, found)
    t2 = time.perf_counter()
    aligned = apply(model_b, perm)

    report = AlignReport(method=method, measure="correlation", inputs=inputs, num_samples=0,
                         kept=sorted(keep), left_in_place=list(spec.fixed))
    if data is not None:
        corr, report.num_samples = correlations(ctx)
        report.seconds_statistics = ctx.cache["seconds"]
        for g, c in corr.items():
            rows = torch.arange(c.shape[0])
            report.groups[g] = GroupReport(c.shape[0], float(c.diagonal().mean()),
                                           float(c[rows, perm[g]].mean()))
    else:
        report.measure, report.inputs = "weight_cosine", None
        pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
        before = weight_similarity(spec, pa, pb, {g: torch.arange(n) for g, n in
                                                  spec.groups.items()})
        after = weight_similarity(spec, pa, pb, perm)
        for g, n in spec.groups.items():
            report.groups[g] = GroupReport(n, before.get(g), after.get(g))
    vals = [(r.before, r.after) for r in report.groups.values() if r.before is not None]
    if vals:
        report.mean_before = sum(v[0] for v in vals) / len(vals)
        report.mean_after = sum(v[1] for v in vals) / len(vals)
    report.seconds_matching = t2 - t1
    report.seconds = time.perf_counter() - t0
    return aligned, perm, report
