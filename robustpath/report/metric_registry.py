"""Every quantity robustpath reports, declared once: its column name (as in the CSV
files, which old runs' readers rely on, so names never change), the human label of
tables and figures, the unit, the definition printed in the report's glossary, which
direction is better, and how its interval is computed.

Readers: :mod:`robustpath.report.tables` (summary columns and headers),
:mod:`robustpath.report.cli` (console summary), :mod:`robustpath.report.html` (glossary,
strong summary), :mod:`robustpath.report.compare` and :mod:`robustpath.report.against`
(comparisons), :mod:`robustpath.stats.paired` (labels), :mod:`robustpath.zoo.matrix`,
:mod:`robustpath.sweep.report` and ``summary.json`` (:mod:`robustpath.report.summary_json`).
A new column is one :func:`declare` here plus the code that computes it.

Groups: ``path`` (accuracy along a path, :mod:`robustpath.stats.barrier`), ``barrier``
(barriers of a path), ``strong`` (the strong stage's summary columns,
:func:`robustpath.strong.files.strong_metrics`), ``point`` (one attacked point of the
strong stage, ``strong_eval.csv``), ``plane`` (``plane.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

from robustpath.registry import Registry

#: how an interval is computed, by the ``interval`` key of a :class:`Metric`
INTERVALS = {
    "bootstrap-examples": "one seed pair: 95% percentile bootstrap over test examples (the "
    "same resample at every t, seeded; robustpath.stats.barrier.path_metrics); several seed "
    "pairs: mean ± std over seed pairs (ddof 1)",
    "bootstrap-strong": "95% percentile bootstrap over the strong stage's example subset "
    "(the same resample at every attacked point; none below 30 examples or resamples; "
    "robustpath.strong.files.strong_metrics); several seed pairs: mean ± std over seed pairs",
    "clopper-pearson": "one seed pair: exact 95% Clopper-Pearson interval of a proportion of "
    "the strong stage's n examples (scipy.stats.binomtest; robustpath.stats.exact); several seed "
    "pairs: mean ± std over seed pairs",
    "exact-paired": "one seed pair: exact 95% interval of a paired difference of two "
    "accuracies on the same examples, from Clopper-Pearson intervals of the two discordant "
    "counts (Bonferroni; conservative; robustpath.stats.exact.paired_difference); several seed "
    "pairs: mean ± std over seed pairs",
    "none": "a point value without an interval",
}

#: how a difference's interval is computed (paired tables, comparisons of runs)
DIFFERENCE_INTERVALS = {
    "paired-seeds": "95% t-interval over seed pairs (t distribution, pairs − 1 degrees of "
    "freedom) with an exact sign-flip permutation p; beside it a 95% bootstrap over test "
    "examples with the seed pairs held fixed (test-set uncertainty only; robustpath.stats.paired)",
    "paired-runs": "95% paired bootstrap over the test examples both runs share (the same "
    "resample for both); rows 'all N pairs' add a bootstrap over seed pairs "
    "(robustpath.report.compare)",
}


@dataclass(frozen=True)
class Metric:
    """One reported quantity. ``unit``: ``"%"`` (stored as a fraction, shown x100),
    ``"nats"``, ``"t"`` (a position on the path in [0, 1]), ``"rel."`` or ``""``;
    ``better``: ``"higher"``, ``"lower"`` or ``""`` (neither, e.g. a position)."""

    name: str
    label: str
    unit: str
    definition: str
    better: str
    interval: str
    group: str
    short: str = ""  # console header (at most ~12 characters); label when empty

    @property
    def percent(self) -> bool:
        """Stored as a fraction, shown in percent."""
        return self.unit == "%"

    @property
    def header(self) -> str:
        """``label (unit)``: a self-explaining table header."""
        return f"{self.label} ({self.unit})" if self.unit not in ("", "t") else self.label

    def scale_digits(self) -> tuple[float, int]:
        """Display scale and decimals: accuracies in % to 0.1, the rest to 0.001."""
        return (100.0, 1) if self.percent else (1.0, 3)


METRICS: Registry[Metric] = Registry("metric")
_ORDER: list[str] = []


def declare(name: str, label: str, unit: str, definition: str, better: str,
            interval: str = "bootstrap-examples", group: str = "path", short: str = "") -> Metric:
    """Register one metric (module level only; the order of declaration is the order of
    table columns)."""
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval method {interval!r}")
    m = Metric(name, label, unit, definition, better, interval, group, short or label)
    METRICS.register(name)(m)
    _ORDER.append(name)
    return m


def get(name: str) -> Metric:
    """The declared metric ``name`` (:class:`robustpath.errors.UserError` when unknown)."""
    return METRICS.get(name)


def label(name: str) -> str:
    """The human label of ``name``; the name itself for an undeclared column."""
    return METRICS.get(name).label if name in METRICS else name


def ordered(group: str | None = None) -> list[Metric]:
    """Declared metrics in declaration order (of one group)."""
    return [METRICS.get(n) for n in _ORDER if group is None or METRICS.get(n).group == group]


def triples(names) -> list[tuple[str, str, bool]]:
    """``[(name, label, percent?)]`` of ``names``: the column lists of the tables."""
    return [(n, METRICS.get(n).label, METRICS.get(n).percent) for n in names]


# ------------------------------------------------------------ along a path (barrier.py)
for _k, _K in (("clean", "Clean"), ("robust", "Robust")):
    _what = "clean accuracy" if _k == "clean" else \
        "robust accuracy (under the run's evaluation attack)"
    _loss = "clean loss" if _k == "clean" else "robust loss (on the evaluation attack's examples)"
    declare(f"{_k}_acc_ends", f"{_K} ends", "%",
            f"mean {_what} of the two endpoints θ(0) and θ(1)", "higher",
            short=f"{_k} ends")
    declare(f"{_k}_acc_a", f"{_K} at θ0", "%", f"{_what} of endpoint θ(0)", "higher")
    declare(f"{_k}_acc_b", f"{_K} at θ1", "%", f"{_what} of endpoint θ(1)", "higher")
    declare(f"{_k}_acc_min", f"{_K} min (grid)", "%",
            f"lowest {_what} over the grid points t of the path (Tatro et al. 2020)", "higher",
            short=f"{_k} min")
    declare(f"{_k}_t_min", f"t at {_k} min (grid)", "t",
            f"position t in [0, 1] where the {_what} is lowest", "")
    declare(f"{_k}_acc_avg", f"{_K} avg", "%",
            f"arc-length-weighted mean {_what} along the path: trapz(A·speed) / "
            "trapz(speed), speed = ‖dθ/dt‖ (the plain mean over t for a line)", "higher",
            short=f"{_k} avg")
    declare(f"{_k}_loss_barrier", f"{_K} loss barrier (grid)", "nats",
            f"max over the grid t of {_loss} minus its linear interpolation between the endpoints, "
            "max_t [L(t) − ((1 − t) L(0) + t L(1))] (Entezari et al. 2021; with robust loss "
            "the robust loss barrier of Zhao et al. 2020)", "lower", group="barrier",
            short=f"{_k} loss barrier")
    declare(f"{_k}_acc_barrier", f"{_K} acc barrier (grid)", "%",
            f"max over the grid t of the linear interpolation of the endpoints' {_what} minus "
            "A(t): max_t [((1 − t) A(0) + t A(1)) − A(t)]", "lower", group="barrier")

declare("robust_acc_min_refined", "Robust min (refined)", "%",
        "lowest robust accuracy over the grid and the refinement points around the grid "
        "minimum (robustpath.paths.evaluate.refine_minimum): the closer bound on the path's true "
        "minimum", "higher", short="rob. min ref.")
declare("robust_t_min_refined", "t at refined min", "t",
        "position of the refined robust minimum (ties: the first in t order, for the value "
        "and its interval alike)", "")
declare("robust_loss_barrier_refined", "Robust loss barrier (refined)", "nats",
        "robust loss barrier over every evaluated point, grid and refinement", "lower",
        group="barrier")
declare("robust_acc_barrier_refined", "Robust acc barrier (refined)", "%",
        "robust accuracy barrier over every evaluated point, grid and refinement", "lower",
        group="barrier")

# ------------------------------------------------------------ strong stage (strong_io.py)
declare("aa_robust_worst", "AA robust at PGD's worst t", "%",
        "AutoAttack accuracy at the path's worst t (lowest PGD robust accuracy over grid and "
        "refinement), on the strong stage's example subset", "higher",
        interval="clopper-pearson", group="strong", short="AA@worst t")
declare("aa_acc_barrier", "AA acc barrier at PGD's worst t (lower bound)", "%",
        "AutoAttack accuracy barrier at PGD's worst t*: (1 − t*) AA(0) + t* AA(1) − AA(t*); "
        "a lower bound on the AutoAttack barrier over the path (see aa_acc_barrier_max)",
        "lower", interval="bootstrap-strong", group="strong")
declare("aa_pgd_gap", "PGD - AA gap at PGD's worst t", "%",
        "evaluation-attack (PGD) accuracy minus AutoAttack accuracy at the worst t: how much "
        "the evaluation attack overestimates robustness there", "lower",
        interval="exact-paired", group="strong", short="PGD−AA")
declare("aa_robust_min", "AA robust min (attacked t)", "%",
        "lowest AutoAttack accuracy over every attacked t (--strong-at grid: every grid t)",
        "higher", interval="clopper-pearson", group="strong")
declare("aa_acc_barrier_max", "AA acc barrier (max over attacked t)", "%",
        "the AutoAttack accuracy barrier as a maximum over every attacked t (--strong-at grid)",
        "lower", interval="bootstrap-strong", group="strong")
declare("aa_pgd_gap_max", "PGD - AA gap (max over attacked t)", "%",
        "largest PGD − AutoAttack accuracy gap over every attacked t (--strong-at grid)",
        "lower", interval="exact-paired", group="strong")
declare("aa_t_worst", "worst t", "t", "position of the path's worst point, where AutoAttack "
        "runs", "", interval="none", group="strong")

# ------------------------------------------------------------ one attacked point (strong_eval.csv)
declare("clean_acc", "Clean", "%", "clean accuracy on the strong stage's subset", "higher",
        interval="none", group="point")
declare("robust_acc_pgd", "PGD (eval.)", "%", "accuracy under the run's evaluation attack",
        "higher", interval="none", group="point")
declare("robust_acc_aa", "AutoAttack", "%", "accuracy under AutoAttack (Croce & Hein 2020; "
        "version in aa_version)", "higher", interval="none", group="point")
declare("robust_acc_pgd_many", "PGD many", "%", "accuracy under the strong stage's long PGD "
        "with restarts (PGD-50 x 10 by default)", "higher", interval="none", group="point")
declare("robust_acc_worst", "Worst of all", "%", "share of examples robust to all three "
        "attacks (evaluation PGD, AutoAttack, long PGD)", "higher", interval="none",
        group="point")
declare("gap_pgd_aa", "PGD − AA", "%", "robust_acc_pgd − robust_acc_aa at the point", "lower",
        interval="none", group="point")
declare("transfer_acc_a", "Transfer from θ0", "%", "accuracy on the evaluation attack's "
        "examples made against endpoint A (a transfer attack)", "higher", interval="none",
        group="point")
declare("transfer_acc_b", "Transfer from θ1", "%", "the same with examples made against "
        "endpoint B", "higher", interval="none", group="point")
declare("masking", "Masking flag", "", "a transfer attack beat the direct attack beyond "
        "sampling error (one-sided exact McNemar, Bonferroni over the path's tests, level "
        "0.05): a sign of gradient masking", "", interval="none", group="point")
declare("aa_grad_passes", "AA grad. passes", "", "AutoAttack's gradient passes per example",
        "", interval="none", group="point")

# ------------------------------------------------------------ plane (plane.json)
declare("max_out_of_plane", "Max distance from the plane", "rel.",
        "largest distance of θ(t) from the plane through θ0, the control point and θ1, "
        "relative to ‖θ1 − θ0‖ (0 for a quadratic Bezier curve)", "", interval="none",
        group="plane")
declare("clean_loss_min", "Clean loss min", "nats", "lowest clean loss on the plane's grid",
        "lower", interval="none", group="plane")
declare("robust_loss_min", "Robust loss min", "nats", "lowest robust loss on the plane's grid",
        "lower", interval="none", group="plane")
declare("robust_err_min", "Robust error min", "%", "lowest robust error on the plane's grid",
        "lower", interval="none", group="plane")

#: the summary table's columns (tables/summary.*), in order
SUMMARY = ("clean_acc_ends", "clean_acc_min", "clean_acc_avg", "robust_acc_ends",
           "robust_acc_min", "robust_t_min", "robust_acc_avg", "clean_loss_barrier",
           "robust_loss_barrier", "robust_acc_barrier", "robust_acc_min_refined",
           "robust_t_min_refined", "robust_loss_barrier_refined", "robust_acc_barrier_refined",
           "aa_robust_worst", "aa_acc_barrier", "aa_pgd_gap", "aa_robust_min",
           "aa_acc_barrier_max", "aa_pgd_gap_max")
#: the console summary's columns, most important first; those that fit in 100
#: characters are shown (robustpath.report.run.format_summary)
CONSOLE_CANDIDATES = ("robust_acc_min", "robust_loss_barrier", "robust_acc_ends",
                      "aa_robust_worst", "robust_acc_avg", "clean_acc_min",
                      "robust_acc_min_refined", "aa_pgd_gap")


def glossary_markdown(names) -> str:
    """The glossary of ``names`` as a Markdown table: column, label, unit, better,
    definition, interval; then the interval methods used."""
    lines = ["| Column | Label | Unit | Better | Definition | Interval |",
             "|---|---|---|---|---|---|"]
    used = []
    for n in names:
        if n not in METRICS:
            continue
        m = METRICS.get(n)
        if m.interval not in used:
            used.append(m.interval)
        lines.append(f"| `{m.name}` | {m.label} | {m.unit or '-'} | {m.better or '-'} | "
                     f"{m.definition.replace('|', '/')} | {m.interval} |")
    lines.append("")
    lines += [f"- **{k}**: {INTERVALS[k]}" for k in used]
    return "\n".join(lines) + "\n"
