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

Two things keep op names honest (see ``docs/capture.md``):

* **the captured op sequence**: a forward that runs an op capture did not see, or fewer ops of a
  kind than capture saw, in a ``(scope, op)`` family that holds an operation point raises
  :class:`~nncompress.errors.GraphMismatchError` (the point could land on another op); unseen
  ops that touch no point run uncompressed, with one warning;
* **activation checkpointing**: when backward re-runs a checkpointed module outside the model's
  forward, its hooks restore the state that module had in the last forward with gradients
  (transformed weights, scope, op counters), so the recomputation runs the same inserted modules.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Container
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, _pop_mode, _push_mode
from torch.overrides import _get_current_function_mode as _current_mode

from nncompress.api.compression import StripFormat
from nncompress.errors import GraphMismatchError, InvalidArgumentError
from nncompress.graph.capture import CapturedGraph, Site, caller_frame, site_of
from nncompress.graph.layout import InsertionCommand, TargetType, TransformationLayout
from nncompress.graph.scopes import is_shape_arithmetic, module_scopes, op_base_name

RUNTIME_ATTR = "nncompress"


Entry = tuple[int, str, str]  # (priority, group, key)
Family = tuple[str, str]  # (scope, op): the ops one call counter numbers


class _AnyName(Container[str]):
    """The known op names of a runtime without a captured sequence (a layout applied by hand)."""

    def __contains__(self, name: object) -> bool:
        return True


_ANY_NAME = _AnyName()


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
        if name not in rt.known_ops:  # one set lookup; the rest only runs for an unseen op
            return rt._run_unseen(name, func, args, kwargs)
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
                 "counters", "depth", "grad", "log", "entries", "recompute", "used", "families")

    def __init__(self, depth: int = 0) -> None:
        self.mode: _HookMode | None = None
        self.by_param: dict[int, list[Entry]] = {}
        self.by_owner: dict[nn.Module, list[tuple[str, list[Entry]]]] = {}
        self.swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
        self.internal = False
        self.weight_cache: dict[int, torch.Tensor] = {}
        self.scopes: dict[nn.Module, tuple[str, str]] = {}
        self.stack: list[nn.Module] = []
        self.counters: dict[Family, int] = {}
        self.depth = depth
        self.grad = False  # gradients enabled when the forward began
        # For recomputation by activation checkpointing: the family of every counted op, in
        # order, and for each module call (id of its first argument, ops counted before it).
        # ``used``: the calls of this forward already recomputed.
        self.log: list[Family] = []
        self.entries: dict[nn.Module, list[tuple[int, int]]] = {}
        self.recompute: nn.Module | None = None  # the module being recomputed in backward
        self.used: set[tuple[nn.Module, int]] = set()
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
        # The captured op sequence: calls per (scope, op), and every name it gave.
        self.captured_counts: dict[Family, int] | None = None
        self.captured_sites: dict[Family, frozenset[Site]] = {}
        self.known_ops: Container[str] = _ANY_NAME
        self.warned_unseen = False
        self.scope_hooks = False  # whether every sub-module has push_scope / pop_scope hooks
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
        self.captured_counts = dict(graph.op_counts)
        self.captured_sites = dict(graph.op_sites)
        self.known_ops = frozenset(f"{s}/{op}_{i}" for (s, op), n in graph.op_counts.items() for i in range(n))

    @property
    def op_points(self) -> bool:
        """Whether any module sits at an operation input or output."""
        return bool(self.pre_points or self.post_points)

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

    def exit(self, root: nn.Module, args: Any, output: Any) -> None:
        """Forward post-hook of the model (runs even if the forward raised)."""
        fw = self._fw
        fw.depth -= 1
        if fw.depth > 0:
            return
        self._end(fw)
        if fw.grad:
            self._last = fw
        if (self.captured_counts is not None and self.op_points and fw.counters != self.captured_counts
                and sys.exc_info()[1] is None):  # after a failed forward the counts are partial
            self._check_counts(fw)

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
        """Forward pre-hook of every module when operation points exist."""
        fw = self._fw
        if fw.depth == 0 and fw.recompute is None:
            fw = self._begin_recompute(module, args)
        if fw.mode is not None and module in fw.scopes:
            if fw.grad and fw.recompute is None:  # (no tensor method here: the mode would count it)
                fw.entries.setdefault(module, []).append((id(args[0]) if args else 0, len(fw.log)))
            fw.stack.append(module)

    def pop_scope(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward post-hook of every module when operation points exist."""
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
        index = fw.counters.get(key, 0)
        fw.counters[key] = index + 1
        if fw.grad:
            fw.log.append(key)
        return f"{scope}/{op}_{index}"

    # -- activation checkpointing ----------------------------------------------------------------

    def _begin_recompute(self, module: nn.Module, args: Any) -> _ForwardState:
        """A hook of ``module`` fired outside the model's forward. In backward, that is activation
        checkpointing re-running the module: give it the state it had in the last forward with
        gradients. Elsewhere it is a direct call of a sub-module, which runs without hooks."""
        last = self._last
        if last is None or torch._C._current_graph_task_id() == -1:
            return self._fw
        fw = _ForwardState()
        fw.recompute, fw.by_param, fw.by_owner = module, last.by_param, last.by_owner
        if self.op_points:
            call = self._recomputed_call(last, module, args)
            fw.scopes, fw.stack = last.scopes, []
            fw.counters = dict(Counter(last.log[: last.entries[module][call][1]]))
        if fw.by_param or self.op_points:
            fw.mode = _HookMode(self)
            fw.mode.__enter__()
        self._fw = fw
        return fw

    def _recomputed_call(self, last: _ForwardState, module: nn.Module, args: Any) -> int:
        """Which call of ``module`` in the last forward backward re-runs: the one with the same first
        argument (non-reentrant checkpointing passes the same tensor), else the latest one not yet
        re-run (reentrant checkpointing passes a detached copy; backward runs in reverse order)."""
        calls = last.entries.get(module)
        if not calls:
            scope = last.scopes.get(module, (type(module).__name__, ""))[0]
            raise GraphMismatchError(
                f"backward re-runs module {scope} (activation checkpointing), but the last forward with "
                "gradients did not call it; run backward after the forward whose graph it differentiates"
            )
        first = id(args[0]) if args else 0
        free = [i for i in range(len(calls)) if (module, i) not in last.used]
        matching = [i for i in free if calls[i][0] == first]
        call = (matching or free or [len(calls) - 1])[-1]
        last.used.add((module, call))
        return call

    # -- the captured op sequence ------------------------------------------------------------------

    def _point_families(self, fw: _ForwardState) -> dict[Family, list[str]]:
        """The op names holding inserted modules, by (scope, op); built once per forward that needs it."""
        if fw.families is None:
            fw.families = {}
            for name in (*self.post_points, *self.pre_points):
                scope, _, op = name.rpartition("_")[0].rpartition("/")
                fw.families.setdefault((scope, op), []).append(name)
        return fw.families

    def _run_unseen(self, name: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run an op capture did not see: refuse if its family holds a point, else run it as is."""
        base = name.rpartition("_")[0]
        scope, _, op = base.rpartition("/")
        points = self._point_families(self._fw).get((scope, op))
        frame = caller_frame(1)
        # The index is past the ops capture counted. If an extra call ran before some of them, the
        # op getting this index is one capture saw (same line of code) pushed back: the points of
        # the family may have acted on other ops. A new line (a loss computed after the outputs)
        # shifted nothing.
        if points and site_of(frame) in self.captured_sites.get((scope, op), ()):
            captured = self.captured_counts.get((scope, op), 0) if self.captured_counts else 0
            raise GraphMismatchError(
                f"this forward ran op {name} ({frame.f_code.co_filename}:{frame.f_lineno}), but capture counted "
                f"{captured} '{op}' call(s) in {scope}: an op capture did not see ran before it, shifting the "
                f"indices that name inserted modules ({sorted(points)[:3]}), so they could act on other ops. "
                "Capture runs the forward once in eval mode on the example input: give an example_input (or "
                "input_info) that takes this branch, or move the data-dependent op into its own sub-module"
            )
        # Only a layer matters to the user (it runs with its float weight); ops of hooks (statistics
        # collectors) and of checkpointing's bookkeeping are unseen too, and would only add noise.
        if not self.warned_unseen and any(isinstance(a, nn.Parameter) for a in (*args, *kwargs.values())):
            self.warned_unseen = True
            warnings.warn(
                f"op {name} did not run when the model was captured (in eval mode, on the example input), so "
                "nothing is inserted there and it runs uncompressed (a training-only branch, or a branch the "
                "example input did not take). No inserted module is affected. This warning is shown once per model",
                UserWarning, stacklevel=3,
            )
        return func(*args, **kwargs)

    def _check_counts(self, fw: _ForwardState) -> None:
        """After a forward: refuse if a family holding a point ran fewer ops than capture saw."""
        captured = self.captured_counts or {}
        for family, points in self._point_families(fw).items():
            ran, expected = fw.counters.get(family, 0), captured.get(family, 0)
            if ran < expected:
                scope, op = family
                raise GraphMismatchError(
                    f"this forward ran {ran} '{op}' call(s) in {scope}, capture counted {expected}: a branch "
                    f"taken at capture was skipped, so inserted modules at {sorted(points)[:3]} acted on other "
                    "ops or did not run. Capture runs the forward once in eval mode on the example input: give "
                    "an example_input (or input_info) that takes the branch this forward takes, or move the "
                    "data-dependent op into its own sub-module"
                )

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


_CAPTURED: weakref.WeakKeyDictionary[nn.Module, CapturedGraph] = weakref.WeakKeyDictionary()


def expect_captured_ops(model: nn.Module, graph: CapturedGraph) -> None:
    """Remember the capture of ``model`` whose op names layouts use; its forwards are checked against it.

    :param model: the captured model.
    :param graph: its capture.
    """
    _CAPTURED[model] = graph
    rt = get_runtime(model)
    if rt is not None:
        rt.expect_ops(graph)


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
    model.register_forward_hook(rt.exit, always_call=True)
    return rt


def apply_layout(model: nn.Module, layout: TransformationLayout) -> HookRuntime | None:
    """Insert every module of the layout into the model, in priority order.

    All points are checked before anything changes: a weight point must name an existing
    parameter. If anything fails, the model is left as it was.

    :param model: the model.
    :param layout: the commands.
    :return: the model's runtime (``None`` for an empty layout on a model without one).
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    for c in layout.commands:
        p = c.point
        if p.target_type is TargetType.WEIGHT:
            name = f"{p.target}.{p.param}".lstrip(".")
            if name not in params:
                raise InvalidArgumentError(f"weight target point {name!r} is not a parameter of the model")
    existing = get_runtime(model)
    if existing is None and not layout.commands:
        return None
    rt = existing or _install(model)
    hooked_owners = {n.rpartition(".")[0] for n in rt.owner_local}
    try:
        for c in sorted(layout.commands, key=lambda c: int(c.priority)):
            rt.insert(c)
    except Exception:
        if existing is None:
            remove_runtime(model)
        raise
    owners = {n.rpartition(".")[0] for n in rt.owner_local}
    for owner_name in sorted(owners - hooked_owners):
        owner = model.get_submodule(owner_name)
        owner.register_forward_pre_hook(rt.swap_in)
        owner.register_forward_hook(rt.swap_out, always_call=True)
    graph = _CAPTURED.get(model)
    if graph is not None and rt.captured_counts is None:
        rt.expect_ops(graph)
    # Scope hooks name ops; with weights read outside their owner they also start the hook mode
    # when checkpointing re-runs a sub-module in backward.
    if not rt.scope_hooks and (rt.op_points or set(rt.weight_points) - rt.owner_local):
        rt.scope_hooks = True
        for module in module_scopes(model, skip=rt):
            if module is not model:
                module.register_forward_pre_hook(rt.push_scope)
                module.register_forward_hook(rt.pop_scope, always_call=True)
    return rt


def remove_runtime(model: nn.Module) -> None:
    """Remove the runtime module and every hook it registered; the model's class and keys are untouched."""
    rt = get_runtime(model)
    if rt is None:
        return
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for hid in [k for k, h in hooks.items() if getattr(h, "__self__", None) is rt]:
                del hooks[hid]
                module._forward_hooks_always_called.pop(hid, None)
    del model._modules[RUNTIME_ATTR]


def strip_runtime(model: nn.Module, strip_format: StripFormat, groups: set[str] | None = None) -> nn.Module:
    """Bake or convert every inserted module, then remove what is no longer needed.

    Weight-point modules that define ``bake_(weight, strip_format) -> bool`` write their effect
    into the parameter and are removed when they return ``True``. Modules (at any point) that
    define ``strip_to(strip_format) -> nn.Module | None`` and are still there are replaced by
    what it returns (``None`` removes them). When nothing remains, the runtime and its hooks are removed, and the
    model has exactly its original class and ``state_dict`` keys.

    :param model: the compressed model (changed in place).
    :param strip_format: the target form.
    :param groups: strip only the modules of these algorithms; all if ``None``.
    :return: the model.
    """
    rt = get_runtime(model)
    if rt is None:
        return model

    def mine(e: Entry) -> bool:
        return groups is None or e[1] in groups

    with torch.no_grad():
        for name, entries in list(rt.weight_points.items()):
            param = model.get_parameter(name)
            kept = []
            for e in entries:
                module = rt.module_at(e)
                if mine(e):
                    bake = getattr(module, "bake_", None)
                    if bake is not None and bake(param, strip_format):
                        continue  # absorbed into the weight
                    to = getattr(module, "strip_to", None)
                    if to is not None:
                        new = to(strip_format)
                        if new is None:
                            continue
                        rt.group(e[1])[e[2]] = new
                kept.append(e)
            _keep_entries(rt, rt.weight_points, name, kept)
    op_tables: list[dict[Any, list[Entry]]] = [rt.post_points, *rt.pre_points.values()]
    for table in op_tables:
        for key, entries in list(table.items()):
            kept = []
            for e in entries:
                to = getattr(rt.module_at(e), "strip_to", None)
                new = to(strip_format) if (mine(e) and to is not None) else rt.module_at(e)
                if new is not None:
                    rt.group(e[1])[e[2]] = new
                    kept.append(e)
            _keep_entries(rt, table, key, kept)
    rt.pre_points = {k: v for k, v in rt.pre_points.items() if v}
    for group in [g for g, m in rt._modules.items() if isinstance(m, nn.ModuleDict) and not len(m)]:
        del rt._modules[group]
    if not (rt.weight_points or rt.op_points):
        remove_runtime(model)
    return model


def _keep_entries(rt: HookRuntime, table: dict[Any, list[Entry]], key: Any, kept: list[Entry]) -> None:
    """Leave only ``kept`` at ``table[key]`` and delete the modules of the other entries."""
    for e in table[key]:
        if e not in kept:
            del rt.group(e[1])[e[2]]
    if kept:
        table[key] = kept
    else:
        del table[key]
