"""Stable operation names and scope matching.

An operation is named ``<module scope>/<op name>_<call index>``, e.g.
``ResNet/Sequential[layer1]/BasicBlock[0]/Conv2d[conv1]/conv2d_0``: the module scope is the
path of module classes with their attribute names from the root, the op name is the function
called (``conv2d``, ``linear``, ``matmul``, ``add``...) and the call index counts calls of that
op in that scope during one forward. The same forward gives the same names every time, so names
can address insertion points, be matched by ``ignored_scopes`` and be stored in checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

REGEX_PREFIX = "{re}"
# NNCF 2.x named wrapped modules NNCFConv2d, NNCFLinear...; nncompress keeps the user's modules,
# so scope patterns written for NNCF match after dropping that prefix.
_NNCF_CLASS_PREFIX = re.compile(
    r"NNCF(?=(Conv|Linear|Embedding|BatchNorm|LayerNorm|GroupNorm|InstanceNorm|ConvTranspose)\w*\\?\[)"
)


def op_base_name(func: Callable[..., object]) -> str:
    """The op name used in operation names: ``F.conv2d`` -> ``conv2d``, ``Tensor.__add__`` -> ``add``.

    :param func: the function or method a forward called.
    :return: its short name.
    """
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # a property such as Tensor.T or Tensor.shape: use the property's name
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        name = name[2:-2]
    return name


def is_shape_arithmetic(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    """Whether a call only combines 0-d tensors (and Python numbers).

    Such calls are not numbered: in eager mode ``x.shape[0] + 1`` is Python arithmetic, but while
    ``torch.onnx.export`` traces the model the sizes are 0-d tensors and the same line becomes a
    torch op. Skipping these calls in capture and at run time keeps op names identical in both.
    """
    seen = False
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            if a.dim() != 0:
                return False
            seen = True
    return seen


def module_scopes(root: nn.Module, skip: nn.Module | None = None) -> dict[nn.Module, tuple[str, str]]:
    """Scope string and qualified name of every module under ``root``.

    :param root: the model.
    :param skip: a sub-module whose subtree is left out (nncompress's own runtime module).
    :return: module -> (scope such as ``Net/Sequential[features]/Conv2d[0]``, qualified name
        such as ``features.0``).
    """
    result: dict[nn.Module, tuple[str, str]] = {root: (type(root).__name__, "")}
    stack: list[nn.Module] = [root]
    while stack:
        parent = stack.pop()
        parent_scope, parent_name = result[parent]
        for attr, child in parent._modules.items():
            if child is None or child is skip or child in result:
                continue
            qualified = f"{parent_name}.{attr}" if parent_name else attr
            result[child] = (f"{parent_scope}/{type(child).__name__}[{attr}]", qualified)
            stack.append(child)
    return result


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def normalize_scope_pattern(pattern: str) -> str:
    """Drop the prefix of NNCF's wrapper classes (``NNCFConv2d[`` -> ``Conv2d[``) from a pattern.

    Only NNCF's own wrapped module types are renamed; a user class such as ``NNCFBackbone`` stays.
    """
    return _NNCF_CLASS_PREFIX.sub("", pattern)


def scope_matches(name: str, pattern: str) -> bool:
    """Whether an operation name matches one scope pattern.

    ``{re}<regex>``: ``re.search`` of the regex in the name. Otherwise the name must equal the
    pattern, or the pattern must be one of the name's module scopes (a prefix ending at ``/``).

    :param name: operation name, e.g. ``Net/Conv2d[conv1]/conv2d_0``.
    :param pattern: one entry of ``ignored_scopes`` / ``target_scopes``.
    :return: ``True`` if it matches.
    """
    pattern = normalize_scope_pattern(pattern)
    if pattern.startswith(REGEX_PREFIX):
        return _compile(pattern[len(REGEX_PREFIX) :]).search(name) is not None
    return name == pattern or name.startswith(pattern.rstrip("/") + "/")
