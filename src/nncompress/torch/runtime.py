"""The hook runtime: runs inserted modules at their target points during the model's forward.

Applying a layout adds one sub-module, ``model.nncompress`` (a :class:`HookRuntime`), that holds
every inserted module (so ``.to()``, ``state_dict()``, ``deepcopy`` and DDP see them) and a
forward pre-hook / post-hook pair on the model. For the duration of each forward of the model,
and only then, a :class:`torch.overrides.TorchFunctionMode` is active that

* replaces a parameter with its transformed version when an op reads it (weight points);
* numbers ops per module scope exactly like :mod:`nncompress.graph.capture`, and runs inserted
  modules on an op's inputs and outputs (operation points).

Nothing global is patched; other models and libraries are unaffected. The original parameters
and their ``state_dict`` keys stay as they are; inserted modules add keys under ``nncompress.``.

Two things keep op names honest (see ``docs/capture.md``): the check of each forward against the
captured op sequence (:mod:`nncompress.torch.op_sequence`), and, for activation checkpointing, the
state a module call had in the last forward with gradients, restored when backward re-runs it
(:mod:`nncompress.torch.recompute`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Container
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, _pop_mode, _push_mode
from torch.overrides import _get_current_function_mode as _current_mode

from nncompress.errors import InvalidArgumentError
from nncompress.graph.capture import CapturedGraph
from nncompress.graph.layout import InsertionCommand, TargetType
from nncompress.graph.scopes import is_shape_arithmetic, module_scopes, op_base_name
from nncompress.torch.op_sequence import ANY_NAME, ExpectedOps, Family, point_families
from nncompress.torch.recompute import ForwardLog, in_backward

RUNTIME_ATTR = "nncompress"


Entry = tuple[int, str, str]  # (priority, group, key)


class _HookMode(TorchFunctionMode):
    def __init__(self, runtime: HookRuntime) -> None:
        super().__init__()
        self.rt = runtime

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        rt = self.rt
        if kwargs is None:
            kwargs = {}
        if rt._fw.internal:  # an inserted module running from a hook: not the model's own op
            return func(*args, **kwargs)
        op = func  # names the op even when ``func`` is replaced below
        wmap = rt._fw.by_param
        if wmap and _reads_any(wmap, args, kwargs):
            rows = rt._embedding_rows(func, args, kwargs)
            if rows is not None:
                func = rows  # the embedding quantizes just the rows it reads
            else:
                args = tuple(rt._weight(a) if id(a) in wmap else a for a in args)
                kwargs = {k: rt._weight(v) if id(v) in wmap else v for k, v in kwargs.items()}
        if not (rt.pre_points or rt.post_points) or is_shape_arithmetic(args, kwargs):
            return func(*args, **kwargs)
        name = rt._next_op_name(op)
        if name not in rt.known_ops:  # the check against capture: one set lookup per op
            if rt.expected is not None:  # (always: without a capture every name is known)
                rt.expected.unseen(name, rt._point_families(rt._fw), args, kwargs)
            return func(*args, **kwargs)
        pre = rt.pre_points.get(name)
        if pre:
            args, kwargs = _map_ports(args, kwargs, {port: rt._chain(e) for port, e in pre.items()})
        result = func(*args, **kwargs)
        post = rt.post_points.get(name)
        if post:
            chain = rt._chain(post)
            if isinstance(result, torch.Tensor):
                result = chain(result)
            elif isinstance(result, tuple) and not hasattr(result, "_fields"):
                result = tuple(chain(r) if isinstance(r, torch.Tensor) else r for r in result)
        return result


def _reads_any(wmap: dict[int, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a call gets one of the transformed parameters (top-level arguments only)."""
    for a in args:
        if id(a) in wmap:
            return True
    return bool(kwargs) and any(id(v) in wmap for v in kwargs.values())


def _map_ports(
    args: tuple[Any, ...], kwargs: dict[str, Any], fns: dict[int, Callable[[torch.Tensor], torch.Tensor]]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Apply ``fns[port]`` to tensor argument number ``port`` (numbered as ``capture.tensor_args``)."""
    port = 0

    def visit(a: Any) -> Any:
        nonlocal port
        if isinstance(a, torch.Tensor):
            fn = fns.get(port)
            port += 1
            return fn(a) if fn is not None else a
        if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            mapped = [visit(x) if isinstance(x, torch.Tensor) else x for x in a]
            return type(a)(mapped) if isinstance(a, tuple) else mapped
        return a

    new_args = tuple(visit(a) for a in args)
    new_kwargs = {k: visit(v) for k, v in kwargs.items()}
    return new_args, new_kwargs


class _ForwardState:
    """What one forward of the model needs; a plain object, as ``nn.Module.__setattr__`` is slow."""

    __slots__ = ("mode", "by_param", "by_owner", "swapped", "internal", "weight_cache", "scopes", "stack",
                 "counters", "depth", "grad", "returned", "record", "log", "recompute", "families")

    def __init__(self, depth: int = 0) -> None:
        self.mode: _HookMode | None = None
        self.by_param: dict[int, list[Entry]] = {}
        self.by_owner: dict[nn.Module, list[tuple[str, list[Entry]]]] = {}
        self.swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
        self.internal = False
        self.weight_cache: dict[int, torch.Tensor] = {}
        self.scopes: dict[nn.Module, tuple[str, str]] = {}
        self.stack: list[nn.Module] = []
        self.counters: dict[Family, int] = defaultdict(int)  # calls per (scope, op) so far
        self.depth = depth
        self.grad = False  # gradients enabled when the forward began
        self.returned = False  # the model's forward returned (set by HookRuntime.returned)
        # For recomputation by activation checkpointing, in a forward with gradients and op points:
        # its counted ops and module calls; ``log`` is ``record.ops``, bound here for the hot path.
        self.record: ForwardLog | None = None
        self.log: list[Family] | None = None
        self.recompute: nn.Module | None = None  # the module being recomputed in backward
        self.families: dict[Family, list[str]] | None = None  # built on the first unseen op


class HookRuntime(nn.Module):
    """Holds inserted modules by group and point, and runs them during the forward.

    Its state (which module sits where) is plain data, so ``copy.deepcopy`` of the model copies
    a working runtime; the hooks are bound methods of this module, which deepcopy re-binds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight_points: dict[str, list[Entry]] = {}  # "module.param" -> entries
        self.pre_points: dict[str, dict[int, list[Entry]]] = {}  # op name -> port -> entries
        self.post_points: dict[str, list[Entry]] = {}  # op name -> entries
        # Weights read only by ops of their owning module: swapped in by that module's hooks,
        # which is cheaper than intercepting every op of the forward.
        self.owner_local: set[str] = set()
        # The captured op sequence (None: a layout applied by hand, not checked) and every name it gave.
        self.expected: ExpectedOps | None = None
        self.known_ops: Container[str] = ANY_NAME
        # Per parameter, the modules whose ops read it at capture (None: no capture).
        self.weight_readers: dict[str, frozenset[str]] | None = None
        self.scope_hooked: set[str] = set()  # sub-modules (qualified names) with push/pop_scope hooks
        self._fw = _ForwardState()
        self._last: _ForwardState | None = None  # the last forward with gradients, for recomputation

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy / pickle: per-forward state is not copied.
        state = self.__dict__.copy()
        state["_fw"] = _ForwardState()
        state["_last"] = None
        return state

    def expect_ops(self, graph: CapturedGraph) -> None:
        """Set the op sequence capture saw, which every forward is checked against.

        :param graph: the capture the inserted modules' points were chosen from.
        """
        self.expected = ExpectedOps(graph)
        self.known_ops = self.expected.names
        self.weight_readers = {name: frozenset(m) for name, m in graph.weight_readers().items()}

    @property
    def op_points(self) -> bool:
        """Whether any module sits at an operation input or output."""
        return bool(self.pre_points or self.post_points)

    @property
    def empty(self) -> bool:
        """Whether no inserted module is left."""
        return not (self.weight_points or self.op_points)

    def forward(self, *args: Any) -> Any:
        """Identity, so that a model that is an ``nn.Sequential`` still runs its layers unchanged."""
        return args[0] if len(args) == 1 else args

    # -- insertion -----------------------------------------------------------------------------

    def insert(self, command: InsertionCommand) -> None:
        """Store the command's module and register it at its point."""
        group = command.group
        if group not in self._modules:
            self.add_module(group, nn.ModuleDict())
        modules = self.group(group)
        key = command.point.key
        modules[key] = command.module
        entry: Entry = (int(command.priority), group, key)
        point = command.point
        if point.target_type is TargetType.WEIGHT:
            name = f"{point.target}.{point.param}".lstrip(".")
            if command.owner_only and name not in self.weight_points:
                self.owner_local.add(name)
            elif not command.owner_only:
                self.owner_local.discard(name)
            lst = self.weight_points.setdefault(name, [])
        elif point.target_type is TargetType.OPERATION_INPUT:
            lst = self.pre_points.setdefault(point.target, {}).setdefault(point.port, [])
        else:
            lst = self.post_points.setdefault(point.target, [])
        lst.append(entry)
        lst.sort()

    def group(self, name: str) -> nn.ModuleDict:
        """The inserted modules of one algorithm, by point key."""
        modules = self._modules[name]
        assert isinstance(modules, nn.ModuleDict)  # only insert() adds children
        return modules

    def module_at(self, entry: Entry) -> nn.Module:
        """The inserted module of an entry."""
        return self.group(entry[1])[entry[2]]

    # -- forward -------------------------------------------------------------------------------

    def enter(self, root: nn.Module, args: Any) -> None:
        """Forward pre-hook of the model: map parameters to their modules, activate the hook mode."""
        fw = self._fw
        fw.depth += 1
        if fw.depth > 1:
            return
        fw.grad = torch.is_grad_enabled()
        self._map_weights(root, fw)
        if self.op_points:
            fw.scopes = module_scopes(root, skip=self)
            fw.stack = [root]
            if fw.grad:
                fw.record = ForwardLog()
                fw.log = fw.record.ops
        if fw.by_param or self.op_points:
            fw.mode = _HookMode(self)
            fw.mode.__enter__()

    def _map_weights(self, root: nn.Module, fw: _ForwardState) -> None:
        for name, entries in self.weight_points.items():
            owner_name, _, pname = name.rpartition(".")
            owner = root.get_submodule(owner_name)
            if name in self.owner_local:
                fw.by_owner.setdefault(owner, []).append((pname, entries))
            else:
                fw.by_param[id(owner._parameters[pname])] = entries

    def returned(self, root: nn.Module, args: Any, output: Any) -> None:
        """Forward post-hook of the model, registered just before :meth:`exit`: PyTorch runs it only
        when the forward returned, so :meth:`exit` knows whether the forward failed."""
        fw = self._fw
        if fw.depth == 1:  # the outermost call of the model, not a nested one
            fw.returned = True

    def exit(self, root: nn.Module, args: Any, output: Any) -> None:
        """Forward post-hook of the model (runs even if the forward raised)."""
        fw = self._fw
        fw.depth -= 1
        if fw.depth > 0:
            return
        self._end(fw)
        if fw.grad:
            self._last = fw
        expected = self.expected
        # After a failed forward the counts are partial: nothing to compare.
        if expected is not None and fw.returned and self.op_points and fw.counters != expected.counts:
            expected.check_counts(fw.counters, self._point_families(fw))

    def _end(self, fw: _ForwardState) -> None:
        """Put the parameters back and leave the hook mode."""
        for module, pname, param in reversed(fw.swapped):  # the root's own weights, if any
            module._parameters[pname] = param  # type: ignore[assignment]
        fw.swapped = []
        fw.weight_cache = {}
        self._fw = _ForwardState()
        if fw.mode is not None:
            fw.mode.__exit__(None, None, None)
            fw.mode = None

    def swap_in(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of a module owning owner-local weights: use the transformed weights.

        For the duration of the module's forward, ``module._parameters[name]`` holds the
        transformed tensor (computed from the parameter, so gradients reach the parameter).
        """
        fw = self._fw
        if fw.depth == 0 and fw.recompute is None:
            fw = self._begin_recompute(module, args)
        owned = fw.by_owner.get(module)
        if not owned:
            return
        # The hook mode, if active, must not count these ops as the model's. When it is the
        # innermost mode it is left for the duration (cheaper than letting it see every op).
        popped = fw.mode is not None and _current_mode() is fw.mode
        if popped:
            _pop_mode()
        fw.internal = True
        try:
            for pname, entries in owned:
                param = module._parameters[pname]
                assert param is not None  # checked when the layout was applied
                weight: torch.Tensor = param
                for entry in entries:
                    weight = self.module_at(entry)(weight)
                fw.swapped.append((module, pname, param))
                module._parameters[pname] = weight  # type: ignore[assignment]
        finally:
            fw.internal = False
            if popped:
                _push_mode(fw.mode)

    def swap_out(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward post-hook (runs even if the forward raised): put the parameters back."""
        fw = self._fw
        swapped = fw.swapped
        while swapped and swapped[-1][0] is module:
            _, pname, param = swapped.pop()
            module._parameters[pname] = param  # type: ignore[assignment]
        if fw.recompute is module:
            self._end(fw)

    def push_scope(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of sub-modules: scope of their ops (with operation points), start of a
        recomputation (activation checkpointing)."""
        fw = self._fw
        if fw.depth == 0 and fw.recompute is None:
            fw = self._begin_recompute(module, args)
        if fw.mode is not None and module in fw.scopes:
            if fw.record is not None:  # (no tensor method here: the mode would count it)
                fw.record.enter_call(module, args)
            fw.stack.append(module)

    def pop_scope(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward post-hook of sub-modules (runs even if the forward raised)."""
        fw = self._fw
        if fw.mode is not None and fw.stack and fw.stack[-1] is module:
            fw.stack.pop()
        if fw.recompute is module:
            self._end(fw)

    def _next_op_name(self, func: Callable[..., Any]) -> str:
        fw = self._fw
        scope = fw.scopes[fw.stack[-1]][0]
        op = op_base_name(func)
        key = (scope, op)
        counters = fw.counters
        index = counters[key]  # a defaultdict, or recompute's CountersAt
        counters[key] = index + 1
        log = fw.log
        if log is not None:
            log.append(key)
        return f"{scope}/{op}_{index}"

    def _begin_recompute(self, module: nn.Module, args: Any) -> _ForwardState:
        """A hook of ``module`` fired outside the model's forward. In backward, that is activation
        checkpointing re-running the module (see :mod:`nncompress.torch.recompute`): give it the
        state it had in the last forward with gradients. Elsewhere it is a direct call of a
        sub-module, which runs without hooks."""
        last = self._last
        if last is None or not in_backward():
            return self._fw
        fw = _ForwardState()
        fw.recompute, fw.by_param, fw.by_owner = module, last.by_param, last.by_owner
        if self.op_points:
            scope = last.scopes.get(module, (type(module).__name__, ""))[0]
            fw.counters = (last.record or ForwardLog()).counters_for(module, args, scope)
            fw.scopes, fw.stack = last.scopes, []
        if fw.by_param or self.op_points:
            fw.mode = _HookMode(self)
            fw.mode.__enter__()
        self._fw = fw
        return fw

    def _point_families(self, fw: _ForwardState) -> dict[Family, list[str]]:
        """The op names holding inserted modules, by (scope, op); built once per forward that needs it."""
        if fw.families is None:
            fw.families = point_families((*self.post_points, *self.pre_points))
        return fw.families

    def _chain(self, entries: list[Entry]) -> Callable[[torch.Tensor], torch.Tensor]:
        modules = [self.module_at(e) for e in entries]

        def run(x: torch.Tensor) -> torch.Tensor:
            for m in modules:
                x = m(x)
            return x

        return run

    def _embedding_rows(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[..., Any] | None:
        """For an ``embedding`` op whose table has one inserted module that can transform just
        the rows read (``embedding_rows``), a replacement for the op; else ``None``."""
        by_param = self._fw.by_param
        if op_base_name(func) != "embedding" or len(args) < 2 or id(args[1]) not in by_param:
            return None
        entries = by_param[id(args[1])]
        module = self.module_at(entries[0]) if len(entries) == 1 else None
        rows_fn = getattr(module, "embedding_rows", None)
        if rows_fn is None:
            return None

        def run(*a: Any, **k: Any) -> Any:
            out = rows_fn(func, a, k)
            if out is None:  # not applicable after all: transform the whole table
                a = tuple(self._weight(x) if id(x) in by_param else x for x in a)
                return func(*a, **k)
            return out

        return run

    def _weight(self, param: torch.Tensor) -> torch.Tensor:
        fw = self._fw
        cached = fw.weight_cache.get(id(param))
        if cached is None:
            cached = param
            for entry in fw.by_param[id(param)]:
                cached = self.module_at(entry)(cached)
            fw.weight_cache[id(param)] = cached
        return cached


def expect_captured_ops(model: nn.Module, graph: CapturedGraph) -> HookRuntime:
    """Give the model's runtime the capture whose op names layouts use; every later forward of
    the model is checked against it.

    The runtime is installed now if the model has none, so the capture reaches it directly;
    :func:`~nncompress.torch.insertion.apply_layout` removes it again if the layouts insert nothing.

    :param model: the captured model.
    :param graph: its capture.
    :return: the model's runtime.
    """
    rt = get_runtime(model) or _install(model)
    rt.expect_ops(graph)
    return rt


def get_runtime(model: nn.Module) -> HookRuntime | None:
    """The model's hook runtime, or ``None`` if nothing was inserted."""
    rt = model._modules.get(RUNTIME_ATTR)
    return rt if isinstance(rt, HookRuntime) else None


def _install(model: nn.Module) -> HookRuntime:
    if RUNTIME_ATTR in model._modules or hasattr(model, RUNTIME_ATTR):
        raise InvalidArgumentError(
            f"the model already has an attribute {RUNTIME_ATTR!r}; nncompress stores its modules under "
            "that name, please rename yours"
        )
    rt = HookRuntime()
    model.add_module(RUNTIME_ATTR, rt)
    model.register_forward_pre_hook(rt.enter)
    model.register_forward_hook(rt.returned)  # runs before exit, and only if the forward returned
    model.register_forward_hook(rt.exit, always_call=True)
    return rt
