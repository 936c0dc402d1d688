"""Trace a model with ``torch.fx`` and record every node's output shape.

The graph is traced with the model in eval mode (``self.training`` is read as a Python
constant while tracing, so eval-mode branches such as ``F.dropout(x, training=False)``
are the ones baked in), then run once on the example input under ``torch.no_grad`` and
eval mode with :class:`torch.fx.passes.shape_prop.ShapeProp`, which stores
``node.meta["tensor_meta"]`` (shape, dtype) for every tensor-valued node. Neither step
changes the model's weights, buffers or train/eval flags.

Failures become :class:`~robustpath.errors.UserError` naming where they happened: the
module being traced (qualified name and class) and the source line, e.g. for
data-dependent control flow such as ``if x.sum() > 0:``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import traceback

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from robustpath.align import registry
from robustpath.attacks.base import eval_mode
from robustpath.errors import UserError

_TORCH_DIR = os.path.dirname(torch.__file__)


class _NamingTracer(fx.Tracer):
    """A tracer that remembers which submodule it is inside when tracing fails."""

    def __init__(self):
        super().__init__()
        self.record_stack_traces = True
        self._stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a module class with a registered permutation rule is one opaque call
        return registry.is_leaf(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self._stack.append(f"{name} ({type(m).__name__})")
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if not hasattr(e, "_robustpath_module"):
                e._robustpath_module = self._stack[-1]
            raise
        finally:
            self._stack.pop()


def _user_frame(exc: BaseException) -> str | None:
    """The innermost traceback frame outside torch: where the user's code failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(_TORCH_DIR)
              and f.filename != __file__]
    if not frames:
        return None
    f = frames[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f"{f.filename}:{f.lineno} in {f.name}(){code}"


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """Symbolically trace ``model`` and propagate shapes from ``example_input``.

    Returns a :class:`torch.fx.GraphModule` sharing ``model``'s submodules (never run it
    in train mode: BatchNorm statistics would move). Raises ``UserError`` when the model
    cannot be traced or does not run on ``example_input``.
    """
    if not isinstance(example_input, torch.Tensor):
        raise UserError(f"example_input must be a tensor, got {type(example_input).__name__}")
    tracer = _NamingTracer()
    with eval_mode(model):
        try:
            graph = tracer.trace(model)
        except Exception as e:  # noqa: BLE001  (user code; re-raised as UserError)
            where = getattr(e, "_robustpath_module", f"<root> ({type(model).__name__})")
            frame = _user_frame(e)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"cannot trace {type(model).__name__} with torch.fx: in module {where}"
                + (f" at {frame}" if frame else "")
                + f": {msg}. Data-dependent control flow (if/while on tensor values) and "
                "untraceable calls are not supported by alignment") from None
        gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
        try:
            # ShapeProp prints the traceback itself before re-raising: keep stderr to the
            # one-line UserError
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                ShapeProp(gm).propagate(example_input)
        except Exception as e:  # noqa: BLE001  (user code; re-raised as UserError)
            # ShapeProp wraps the model's own error in "ShapeProp error for: node=... with
            # meta={...}" (the meta's repr runs to kilobytes): report the cause and the node
            cause = e.__cause__ or e
            msg = str(cause).strip().splitlines()[0] if str(cause).strip() \
                else type(cause).__name__
            node = re.search(r"node=%(\S+)", str(e)) if cause is not e else None
            raise UserError(f"{type(model).__name__} does not run on an example input of shape "
                            f"{tuple(example_input.shape)}"
                            + (f" (node '{node.group(1)}')" if node else "")
                            + f": {msg}") from None
    return gm


def node_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The output shape ShapeProp recorded, or None for non-tensor (or tuple) outputs."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(s) for s in meta.shape)


def node_location(node: fx.Node) -> str:
    """Human-readable description of a node: module name/class or function, plus source line."""
    if node.op == "call_module":
        root = node.graph.owning_module
        mod = root.get_submodule(node.target) if root is not None else None
        what = f"module '{node.target}' ({type(mod).__name__})"
    elif node.op == "call_function":
        what = f"function {getattr(node.target, '__name__', node.target)} (node '{node.name}')"
    elif node.op == "call_method":
        what = f"method .{node.target}() (node '{node.name}')"
    else:
        what = f"{node.op} '{node.target}'"
    frames = _frames(node.stack_trace or "")
    if frames:
        path, rest, code = frames[-1]
        what += f" at {path}{rest}" + (f" `{code}`" if code else "")
    return what


def _frames(stack_trace: str) -> list[tuple[str, str, str]]:
    """(file, ', line N, in fn', code) of the stack-trace frames outside torch."""
    lines = [ln.strip() for ln in stack_trace.strip().splitlines()]
    out = []
    for i, ln in enumerate(lines):
        if not ln.startswith('File "'):
            continue
        path, _, rest = ln[6:].partition('"')
        if os.path.abspath(path).startswith(_TORCH_DIR) or path == __file__:
            continue
        code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
        out.append((path, rest, code))
    return out
