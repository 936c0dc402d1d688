"""Proximal alternating minimization (PAM) over permutations: Tatro et al.'s, as in
their code, and robustpath's robust variant.

:mod:`robustpath.pam.robust` is robustpath's own PAM variant (robust objective, momentum,
Dykstra projection, one Hungarian candidate, the control point fixed in A's frame);
this package follows IBM/NeuronAlignment: clean objective (robust as an option), their
schedule and projection, candidates from the Hungarian projection, the previous
permutation and Birkhoff-von Neumann samples, and the control point that moves with
the permutation. See :mod:`robustpath.pam.tatro`.
"""

from robustpath.pam.birkhoff import bvn_decomposition, project_ds_tatro, sample_bvn
from robustpath.pam.relaxed import (
           permutation_matrix,
           project_doubly_stochastic,
           relaxed_state,
           round_to_permutation,
)
from robustpath.pam.robust import PAMConfig, PAMResult, pam
from robustpath.pam.tatro import TatroPAMConfig, TatroPAMResult, perm_update, tatro_pam, warm_start

__all__ = ["PAMConfig", "PAMResult", "pam", "permutation_matrix", "project_doubly_stochastic",
           "relaxed_state", "round_to_permutation", "TatroPAMConfig", "TatroPAMResult",
           "tatro_pam", "warm_start", "perm_update", "project_ds_tatro", "bvn_decomposition",
           "sample_bvn"]
