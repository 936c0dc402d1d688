"""Attacks with one signature ``attack(model, x, y) -> x_adv`` in pixel space [0, 1]: PGD / FGSM-RS (``base``), torchattacks adapters (``adapters``), Croce & Hein's standard AutoAttack (``autoattack``), accuracy and loss under attack (``metrics``)."""

# the modules that register attacks in robustpath.attacks.base.ATTACKS besides base's own
from robustpath.attacks import adapters, autoattack  # noqa: E402, F401
