"""Capture the operations one forward pass of a model runs.

The forward runs once on an example input under a :class:`torch.overrides.TorchFunctionMode`
that sees every functional call, tensor method and operator (``F.conv2d`` inside
``nn.Conv2d.forward``, ``torch.matmul`` in attention, ``x + y``), while temporary forward hooks
on every module keep the module scope. Nothing needs torch.fx: data-dependent control flow
simply runs. As in NNCF 2.x, the forward runs in eval mode: BatchNorm uses its running statistics
(so a batch of one sample works), and branches that run only in training (Inception's auxiliary
classifier under ``if self.training``) are not captured, hence not compressed. The model is left
exactly as it was: each module's mode, buffers (BatchNorm running statistics) and the random
number generator state are restored afterwards, and all hooks are removed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nncompress.errors import CaptureError
from nncompress.graph.scopes import is_shape_arithmetic, module_scopes, op_base_name

Site = tuple[str, int, int]
"""Where an op is called: (file, first line of the calling function, bytecode offset)."""

_TORCH_DIR = os.path.dirname(torch.__file__)
# Python layers between the caller and the mode (``F.relu`` -> ``handle_torch_function``): skipped,
# so that the site is the line of model code that called the op.
_DISPATCH_FILES = frozenset(
    os.path.join(_TORCH_DIR, *f.split("/"))
    for f in ("overrides.py", "functional.py", "nn/functional.py", "_tensor.py", "_jit_internal.py")
)


def caller_frame(depth: int) -> FrameType:
    """The frame of the model code that called an op, seen from a ``__torch_function__`` handler.

    :param depth: frames between the caller of this function and the handler (0: the handler).
    :return: the first frame above the handler outside torch's dispatch wrappers.
    """
    frame = sys._getframe(depth + 2)
    while frame.f_back is not None and frame.f_code.co_filename in _DISPATCH_FILES:
        frame = frame.f_back
    return frame


def site_of(frame: FrameType) -> Site:
    """The call site of an op whose caller is ``frame``: stable across forwards."""
    return frame.f_code.co_filename, frame.f_code.co_firstlineno, frame.f_lasti


@dataclass(frozen=True)
class WeightRead:
    """A parameter an operation reads directly.

    :param port: position of the parameter among the op's tensor arguments.
    :param module: qualified name of the module owning the parameter (``layer1.0.conv1``).
    :param param: the parameter's attribute name in that module (``weight``).
    :param shape: the parameter's shape.
    """

    port: int
    module: str
    param: str
    shape: tuple[int, ...]

    @property
    def qualified_name(self) -> str:
        """``module.param``, the parameter's key in ``named_parameters()``."""
        return f"{self.module}.{self.param}" if self.module else self.param


@dataclass
class OpNode:
    """One operation the forward ran.

    :param name: stable name, ``<scope>/<op>_<call index>``.
    :param op: the op's short name (``conv2d``, ``linear``, ``add``...).
    :param scope: the module scope (``Net/Conv2d[conv1]``).
    :param module: qualified name of the innermost module running the op (``""`` for the root).
    :param module_type: class name of that module.
    :param inputs: for each tensor argument, the name of the op that produced it,
        ``"@input:<i or keyword>"`` for a model input, ``None`` for constants and buffers.
    :param weights: the parameters the op reads directly.
    :param output_shapes: shapes of the tensors it returned.
    """

    name: str
    op: str
    scope: str
    module: str
    module_type: str
    inputs: list[str | None] = field(default_factory=list)
    weights: list[WeightRead] = field(default_factory=list)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    output_dtypes: list[torch.dtype] = field(default_factory=list)
    input_dtypes: list[torch.dtype] = field(default_factory=list)

    @property
    def weight(self) -> WeightRead | None:
        """The op's main weight: the first parameter it reads with 2 or more dimensions."""
        return next((w for w in self.weights if len(w.shape) >= 2), None)


@dataclass
class CapturedGraph:
    """The operations of one forward, in execution order.

    :param nodes: op name -> node, in the order the ops ran.
    :param model_type: class name of the captured model.
    :param capture_seconds: wall time the capture took.
    :param outputs: the ops whose results the model returned, in output order.
    :param op_counts: how many calls of each ``(scope, op)`` the forward counted, including calls
        that returned no tensor (so not in ``nodes``); the hook runtime compares each forward
        with it to detect a different op sequence.
    :param op_sites: the call sites (lines of model code) of each ``(scope, op)``'s calls.
    """

    nodes: dict[str, OpNode]
    model_type: str
    capture_seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    op_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    op_sites: dict[tuple[str, str], frozenset[Site]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[OpNode]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def consumers(self) -> dict[str, list[tuple[str, int]]]:
        """Producer name (op or ``@input:...``) -> the (op, port) pairs that read its output."""
        out: dict[str, list[tuple[str, int]]] = {}
        for node in self.nodes.values():
            for port, producer in enumerate(node.inputs):
                if producer is not None:
                    out.setdefault(producer, []).append((node.name, port))
        return out

    def weight_readers(self) -> dict[str, set[str]]:
        """Parameter (qualified name) -> qualified names of the modules whose ops read it directly."""
        readers: dict[str, set[str]] = {}
        for node in self.nodes.values():
            for read in node.weights:
                readers.setdefault(read.qualified_name, set()).add(node.module)
        return readers

    def owner_only_weights(self) -> set[str]:
        """Parameters (qualified names) read only by ops of the module that owns them."""
        owners = {read.qualified_name: read.module for node in self.nodes.values() for read in node.weights}
        return {name for name, modules in self.weight_readers().items() if modules == {owners[name]}}

    def weighted_nodes(self) -> list[OpNode]:
        """Ops that read at least one parameter, in execution order."""
        return [n for n in self.nodes.values() if n.weights]


def tensor_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensor arguments of a call in port order: positional (one level into lists), then keyword.

    :param args: positional arguments.
    :param kwargs: keyword arguments.
    :return: the tensors.
    """
    out: list[torch.Tensor] = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _flatten_outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (list, tuple)):
        return [r for r in result if isinstance(r, torch.Tensor)]
    return []


class _CaptureMode(TorchFunctionMode):
    """Records every op that returns tensors, naming it by the current module scope."""

    def __init__(self, scopes: dict[nn.Module, tuple[str, str]], params: dict[int, tuple[str, str]]):
        super().__init__()
        self.scopes = scopes
        self.params = params
        self.stack: list[nn.Module] = []
        self.counters: dict[tuple[str, str], int] = {}
        self.sites: dict[tuple[str, str], set[Site]] = {}
        self.nodes: dict[str, OpNode] = {}
        self.producers: dict[int, str] = {}
        self.keep_alive: list[torch.Tensor] = []  # ids stay unique while the capture runs
        self.last_op = "<no op yet>"

    def enter_module(self, module: nn.Module, args: Any) -> None:
        self.stack.append(module)

    def exit_module(self, module: nn.Module, args: Any, output: Any) -> None:
        self.stack.pop()

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if is_shape_arithmetic(args, kwargs):
            return func(*args, **kwargs)
        # Count every other call, as the runtime hooks do, so that call indices agree with them.
        module = self.stack[-1]
        scope, module_name = self.scopes[module]
        op = op_base_name(func)
        index = self.counters.get((scope, op), 0)
        self.counters[(scope, op)] = index + 1
        self.sites.setdefault((scope, op), set()).add(site_of(caller_frame(0)))
        name = f"{scope}/{op}_{index}"
        self.last_op = name
        result = func(*args, **kwargs)
        outputs = _flatten_outputs(result)
        if not outputs:
            return result  # metadata (size, dim, shape...) and in-place setters
        node = OpNode(name, op, scope, module_name, type(module).__name__)
        for port, t in enumerate(tensor_args(args, kwargs)):
            node.inputs.append(self.producers.get(id(t)))
            node.input_dtypes.append(t.dtype)
            owner = self.params.get(id(t)) if isinstance(t, nn.Parameter) else None
            if owner is not None:
                node.weights.append(WeightRead(port, owner[0], owner[1], tuple(t.shape)))
        for t in outputs:
            node.output_shapes.append(tuple(t.shape))
            node.output_dtypes.append(t.dtype)
            self.producers[id(t)] = name
            self.keep_alive.append(t)
        self.nodes[name] = node
        return result


def _parameter_owners(model: nn.Module, skip: nn.Module | None) -> dict[int, tuple[str, str]]:
    owners: dict[int, tuple[str, str]] = {}
    for module, (_, qualified) in module_scopes(model, skip).items():
        for pname, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), (qualified, pname))
    return owners


def capture(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    skip: nn.Module | None = None,
) -> CapturedGraph:
    """Run the model once and record the operations it runs.

    :param model: the model; it runs in eval mode and is not changed (modes, buffers and RNG state
        are restored).
    :param args: positional inputs of the forward.
    :param kwargs: keyword inputs of the forward.
    :param skip: a sub-module left out of scopes and parameters (nncompress's runtime module).
    :return: the captured graph.
    :raises CaptureError: if the forward fails; the message names the op it failed at (or after).
    """
    kwargs = kwargs or {}
    scopes = module_scopes(model, skip)
    mode = _CaptureMode(scopes, _parameter_owners(model, skip))
    handles = []
    for module in scopes:
        handles.append(module.register_forward_pre_hook(mode.enter_module))
        handles.append(module.register_forward_hook(mode.exit_module, always_call=True))
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    for i, t in enumerate(args):
        if isinstance(t, torch.Tensor):
            mode.producers[id(t)] = f"@input:{i}"
    for key, t in kwargs.items():
        if isinstance(t, torch.Tensor):
            mode.producers[id(t)] = f"@input:{key}"
    rng = torch.get_rng_state()
    modes = [(m, m.training) for m in model.modules()]
    start = time.perf_counter()
    try:
        model.eval()
        with torch.no_grad(), mode:
            result = model(*args, **kwargs)
    except Exception as exc:
        raise CaptureError(
            f"the model failed while nncompress ran it once to capture its operations "
            f"(it failed at or after op {mode.last_op}): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        elapsed = time.perf_counter() - start
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        torch.set_rng_state(rng)
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])
    outputs = [mode.producers[id(t)] for t in _output_tensors(result) if id(t) in mode.producers]
    return CapturedGraph(mode.nodes, type(model).__name__, elapsed, [o for o in outputs if not o.startswith("@")],
                         dict(mode.counters), {k: frozenset(v) for k, v in mode.sites.items()})


def _output_tensors(result: Any) -> list[torch.Tensor]:
    """The tensors in a forward's result: a tensor, nested tuples/lists, dicts, ModelOutput."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in _output_tensors(v)]
    if isinstance(result, (list, tuple)):
        return [t for v in result for t in _output_tensors(v)]
    return []
