"""robustpath: robust loss barriers between adversarially trained networks.

Pipeline: data -> adversarial endpoints -> neuron alignment -> curves fitted with
PGD in the loop -> path evaluation (clean + robust) -> barrier tables and plots.
Pixels are in [0, 1] everywhere; normalisation lives inside the models.
"""

__version__ = "0.1.0"
