"""The public registry of permutation rules: how an operation moves permuted units.

A rule is ``rule(b, node) -> state``: ``b`` is the spec builder (see below), ``node``
the ``torch.fx`` node, and the state is what :mod:`.rules` describes (``Perm`` for a
tensor carrying permuted units, ``FIXED_T`` otherwise). Rules are looked up

* for a module call by the module's class, walking its MRO (a registered class, given
  as the class or as ``"package.module.ClassName"``, is also traced as one opaque call:
  its forward is not entered, so the rule alone says what it does);
* for a function call by the function object, its full name
  (``"torchvision.ops.stochastic_depth.stochastic_depth"``), then, for functions of
  torch / operator / builtins, by its name (``"layer_norm"``);
* for a method call by the method name (``"view"``).

Register with :func:`register_rule`::

    from robustpath.align import register_rule
    from robustpath.align.rules import Perm, arg, main_input

    @register_rule(Scale)                       # y = x * self.gain, gain [C], units axis 1
    def scale_rule(b, node):
        st = main_input(b, node, arg(node, 0, "x"))
        if isinstance(st, Perm):
            b.register(b.key(node.target, "gain"), 0, st.segs, node)
        return st

The builder ``b`` offers: ``b.state(x)``, ``b.shape(node)``, ``b.module(node)``,
``b.key(module_name, attr)`` (state-dict key), ``b.new_var(size, name, node)`` (a fresh
group; wrap as ``Seg(var, size)``), ``b.register(key, axis, segs, node)`` (that axis of
that parameter is permuted by ``segs``), ``b.union_segs(s1, s2, node)``, ``b.fix(segs)``,
``b.pin(key)`` (never permute it) and ``b.refuse(node, reason)``. The generic rules of
:mod:`.rules` and :func:`.layers.affine` are building blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx, nn

Rule = Callable[[object, fx.Node], object]
MODULE_RULES: dict[type | str, Rule] = {}
FUNCTION_RULES: dict[object, Rule] = {}
_LEAVES: set[type | str] = set()


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_rule(*targets, replace: bool = False) -> Callable[[Rule], Rule]:
    """Decorator registering ``rule(b, node)`` for each target: a module class (or its
    dotted name, which avoids importing the package), a function, or a function/method
    name. A target registered twice raises ``ValueError`` unless ``replace=True``."""

    def deco(rule: Rule) -> Rule:
        for t in targets:
            dotted = isinstance(t, str) and "." in t  # a class's or a function's full name
            tables = [MODULE_RULES] if isinstance(t, type) else \
                [MODULE_RULES, FUNCTION_RULES] if dotted else [FUNCTION_RULES]
            if any(t in table for table in tables) and not replace:
                raise ValueError(f"a permutation rule for {t!r} is already registered")
            for table in tables:
                table[t] = rule
            if MODULE_RULES in tables and not (isinstance(t, type) and
                                               t.__module__.startswith("torch.nn")):
                _LEAVES.add(t)
        return rule

    return deco


def module_rule(m: nn.Module) -> Rule | None:
    """The rule of the nearest registered class in ``type(m)``'s MRO."""
    for cls in type(m).__mro__:
        rule = MODULE_RULES.get(cls) or MODULE_RULES.get(_qualname(cls))
        if rule is not None:
            return rule
    return None


def is_leaf(m: nn.Module) -> bool:
    """Registered outside ``torch.nn`` (exactly this class): traced as one call."""
    return type(m) in _LEAVES or _qualname(type(m)) in _LEAVES


def function_rule(target, name: str | None) -> Rule | None:
    try:
        rule = FUNCTION_RULES.get(target)
    except TypeError:  # unhashable target
        rule = None
    if rule is None and callable(target):
        rule = FUNCTION_RULES.get(f"{getattr(target, '__module__', '')}."
                                  f"{getattr(target, '__qualname__', '')}")
    if rule is None and name is not None:
        rule = FUNCTION_RULES.get(name)
    return rule


__all__ = ["FUNCTION_RULES", "MODULE_RULES", "Rule", "function_rule", "is_leaf", "module_rule",
           "register_rule"]
