"""``python -m robustpath.zoo``: paths between published robust models of RobustBench.

RobustBench's model zoo holds many models of one architecture trained by different
groups (CIFAR-10 L-inf: ResNet-18s, PreActResNet-18s, many WideResNet-28-10s). This
module loads them and measures the robust loss barrier between every pair of the same
architecture, before and after neuron alignment.

Loading (:func:`~robustpath.zoo.access.load`) goes through RobustBench's own ``load_model``, which reads
``<model_dir>/<dataset>/<threat>/<name>.pt`` (e.g. ``models/cifar10/Linf/
Sehwag2021Proxy_R18.pt``) and only downloads a missing file. robustpath checks the file
first: a missing checkpoint with ``ROBUSTPATH_OFFLINE=1`` or no network is one clear
error naming the expected path, and RobustBench never tries to download. RobustBench
1.1.1's packaging quirks are handled by :mod:`robustpath.zoo.rbcompat`. Every zoo model
takes pixels in [0, 1]: normalisation, where a model has one, is inside it (mean/std
buffers or a wrapper); the others were trained on raw pixels (:func:`~robustpath.zoo.access.describe`).

Architectures (:func:`~robustpath.zoo.access.list_entries`) are compared without weights: every registry
entry's constructor is run on PyTorch's ``meta`` device (no memory, no download) and
its class name plus the names and shapes of all parameters and buffers are hashed.
Two models can be joined by a path only when both agree.

Subcommands: ``list`` (zoo entries grouped by architecture, marking the checkpoints
present in ``--model-dir``) and ``compare`` (every same-architecture pair: align,
evaluate the paths, barrier matrix, optional AutoAttack and transfer checks). Stages
are cached under ``<out>/ckpt/`` by a hash of their configuration and inputs (the
checkpoint files' SHA-256), so a rerun computes nothing.

Package layout (import from the modules; this package re-exports nothing):
:mod:`~robustpath.zoo.access` (RobustBench registry, architectures, verified checkpoint
files, loading: ``load``, ``describe``, ``registry``), :mod:`~robustpath.zoo.config`
(``CompareConfig`` and its flags), :mod:`~robustpath.zoo.plan` (pairs;
:class:`ZooEndpoint`), :mod:`~robustpath.zoo.source` (the ``zoo`` endpoint source of the
engine), :mod:`~robustpath.zoo.run` (the comparison: the engine's plan plus the zoo's own
post-processing), :mod:`~robustpath.zoo.matrix` (pairwise barrier matrix),
:mod:`~robustpath.zoo.cli` (``list`` / ``compare``: ``main``).
"""
