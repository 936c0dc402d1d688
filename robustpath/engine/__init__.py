"""The engine: one plan of stage nodes and the executors that run it, for every command.

Modules: :mod:`~robustpath.engine.plan` (the graph: a node per stage computation, named
by its cache key; cells share nodes), :mod:`~robustpath.engine.sources` (endpoint
sources: trained seeds, checkpoint files, and the zoo's, registered from
:mod:`robustpath.zoo.source` and imported on first use),
:mod:`~robustpath.engine.nodes` (one runner per core stage: what a node computes),
:mod:`~robustpath.engine.path_stages` (the registry of the stages that hang off a path:
strong, curvature, plane, each declared in its own module),
:mod:`~robustpath.engine.executors` (serial in process, or a pool of worker processes)
and :mod:`~robustpath.engine.ray_executor` (Ray tasks), :mod:`~robustpath.engine.run`
(one run folder's plan executed, for ``robustpath.bench``),
:mod:`~robustpath.engine.assemble` (node results -> a run folder's outputs),
:mod:`~robustpath.engine.log` (start banner, stage lines, time left).
``robustpath.bench`` executes a one-cell plan, ``robustpath.sweep`` many cells.
"""
