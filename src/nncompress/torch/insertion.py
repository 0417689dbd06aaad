"""Putting a layout's modules into a model and taking them out again.

:func:`apply_layout` inserts every module of a :class:`~nncompress.graph.layout.TransformationLayout`
into the model's :class:`~nncompress.torch.runtime.HookRuntime` (installing it and its hooks on
first use); :func:`strip_runtime` bakes or converts them (``strip``); :func:`remove_runtime` takes
the runtime and every hook it registered away, leaving the model's class and keys as they were.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncompress.api.compression import StripFormat
from nncompress.errors import InvalidArgumentError
from nncompress.graph.layout import TargetType, TransformationLayout
from nncompress.graph.scopes import module_scopes
from nncompress.torch.runtime import RUNTIME_ATTR, Entry, HookRuntime, _install, get_runtime


def apply_layout(model: nn.Module, layout: TransformationLayout) -> HookRuntime | None:
    """Insert every module of the layout into the model, in priority order.

    All points are checked before anything changes: a weight point must name an existing
    parameter. If anything fails, the model is left as it was. Forwards are checked against the
    capture given to :func:`expect_captured_ops`, if any.

    :param model: the model.
    :param layout: the commands.
    :return: the model's runtime (``None`` if it holds nothing: an empty layout on a model
        without inserted modules).
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
    fresh = rt.empty  # new, or installed with the capture: removed on failure
    hooked_owners = {n.rpartition(".")[0] for n in rt.owner_local}
    try:
        for c in sorted(layout.commands, key=lambda c: int(c.priority)):
            rt.insert(c)
    except Exception:
        if fresh:
            remove_runtime(model)
        raise
    if rt.empty:
        remove_runtime(model)
        return None
    owners = {n.rpartition(".")[0] for n in rt.owner_local}
    for owner_name in sorted(owners - hooked_owners):
        owner = model.get_submodule(owner_name)
        owner.register_forward_pre_hook(rt.swap_in)
        owner.register_forward_hook(rt.swap_out, always_call=True)
    _add_scope_hooks(model, rt)
    return rt


def _add_scope_hooks(model: nn.Module, rt: HookRuntime) -> None:
    """Register push_scope / pop_scope on the sub-modules that need them and lack them.

    With operation points, every sub-module: they give ops their scope. Otherwise they only start
    the hook mode when checkpointing re-runs a module in backward, which matters where an op reads
    a weight outside its owner's hooks (tied weights, embeddings): on the modules whose ops read
    such weights at capture, or every sub-module without a capture to tell.
    """
    shared = set(rt.weight_points) - rt.owner_local
    readers = rt.weight_readers
    wanted: set[str] | None = None  # None: all
    if not rt.op_points and readers is not None and shared <= readers.keys():
        wanted = {m for name in shared for m in readers[name]}
    elif not (rt.op_points or shared):
        wanted = set()
    for module, (_, qualified) in module_scopes(model, skip=rt).items():
        if module is model or qualified in rt.scope_hooked or (wanted is not None and qualified not in wanted):
            continue
        rt.scope_hooked.add(qualified)
        module.register_forward_pre_hook(rt.push_scope)
        module.register_forward_hook(rt.pop_scope, always_call=True)


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
    if rt.empty:
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
