"""Adversarial training of endpoint networks (``loop``), its per-epoch checkpoints (``state``) and ``python -m robustpath.train`` (``cli``)."""
