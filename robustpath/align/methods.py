"""The alignment methods a run can name, each with its metadata in one place.

An entry says what a method is called in tables and figures (``label``), how it is
drawn (``color`` from the Okabe-Ito palette of :mod:`robustpath.report.style`, ``marker``),
whether it reads data (activation matching and PAM do, weight matching and ``none`` do
not), which settings enter its cache key (``key_fields``: spec entry -> config field,
read by :func:`robustpath.engine.keys.align_spec` beside the two endpoint keys; PAM's key is
its whole :class:`~robustpath.pam.PAMConfig`, :func:`robustpath.engine.keys.pam_config`)
and, for PAM, the one-shot method it starts from, which PAM (``pam``: robustpath's robust
variant, :mod:`robustpath.pam.robust`; ``tatro``: Tatro et al.'s, :mod:`robustpath.pam.tatro`)
and, for Tatro's, its objective (``clean``, theirs, or ``robust``: PGD in the loop). Config validation, the bench / zoo ``--help``,
tables, figures and the stages all read this registry; nothing else lists methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustpath.registry import Registry
from robustpath.report.style import OKABE_ITO


@dataclass(frozen=True)
class AlignMethod:
    name: str
    label: str
    color: str
    marker: str
    needs_data: bool
    key_fields: tuple[tuple[str, str], ...] = ()  # (spec entry, config field)
    pam_start: str | None = None  # PAM: the one-shot method whose permutation it refines
    pam: str = "robust"           # PAM: robust (robustpath.pam.robust) | tatro (pam.tatro)
    objective: str = "robust"     # PAM: clean | robust (the robust variant is always robust)

    @property
    def one_shot(self) -> bool:
        return self.pam_start is None


ALIGN: Registry[AlignMethod] = Registry("alignment method")

for _m in (
    AlignMethod("none", "unaligned", OKABE_ITO["vermillion"], "o", needs_data=False),
    AlignMethod("activation", "aligned (act.)", OKABE_ITO["blue"], "s", needs_data=True,
                key_fields=(("inputs", "align_inputs"), ("samples", "align_samples"))),
    AlignMethod("weight", "aligned (weight)", OKABE_ITO["green"], "^", needs_data=False),
    AlignMethod("pam-none", "PAM from unaligned", OKABE_ITO["orange"], "v", needs_data=True,
                pam_start="none"),
    AlignMethod("pam-activation", "PAM from aligned", OKABE_ITO["purple"], "D",
                needs_data=True, pam_start="activation"),
    # Tatro et al.'s PAM: clean objective (theirs) and robust; same colour per start,
    # the robust objective told apart by its filled marker
    AlignMethod("tatro-none", "Tatro PAM from unaligned", OKABE_ITO["sky"], "<",
                needs_data=True, pam_start="none", pam="tatro", objective="clean"),
    AlignMethod("tatro-activation", "Tatro PAM from aligned", OKABE_ITO["black"], ">",
                needs_data=True, pam_start="activation", pam="tatro", objective="clean"),
    AlignMethod("tatro-robust-none", "Tatro PAM (robust obj.) from unaligned", OKABE_ITO["sky"],
                "P", needs_data=True, pam_start="none", pam="tatro", objective="robust"),
    AlignMethod("tatro-robust-activation", "Tatro PAM (robust obj.) from aligned",
                OKABE_ITO["black"], "X", needs_data=True, pam_start="activation", pam="tatro",
                objective="robust"),
):
    ALIGN.register(_m.name)(_m)

#: registration order = the order of rows in tables and of legend entries
ORDER: tuple[str, ...] = ALIGN.registered()
ONE_SHOT: tuple[str, ...] = tuple(n for n in ORDER if ALIGN.get(n).one_shot)
PAM: dict[str, str] = {n: ALIGN.get(n).pam_start for n in ORDER if not ALIGN.get(n).one_shot}
LABEL: dict[str, str] = {n: ALIGN.get(n).label for n in ORDER}
COLORS: dict[str, str] = {n: ALIGN.get(n).color for n in ORDER}
MARKERS: dict[str, str] = {n: ALIGN.get(n).marker for n in ORDER}
