"""Tatro et al.'s proximal alternating minimization (PAM), as in their code.

``robustpath.align.pam`` is robustpath's own PAM variant (robust objective, momentum,
Dykstra projection, one Hungarian candidate, the control point fixed in A's frame);
this package follows IBM/NeuronAlignment: clean objective (robust as an option), their
schedule and projection, candidates from the Hungarian projection, the previous
permutation and Birkhoff-von Neumann samples, and the control point that moves with
the permutation. See :mod:`robustpath.pam.tatro`.
"""

from .birkhoff import bvn_decomposition, project_ds_tatro, sample_bvn
from .tatro import TatroPAMConfig, TatroPAMResult, perm_update, tatro_pam, warm_start

__all__ = ["TatroPAMConfig", "TatroPAMResult", "tatro_pam", "warm_start", "perm_update",
           "project_ds_tatro", "bvn_decomposition", "sample_bvn"]
