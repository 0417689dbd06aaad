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
# NNCF 2.x wrapped these modules in classes named NNCF<type> (NNCFConv2d...) and modules registered
# with ``register_module`` in NNCFUser<type>; nncompress keeps the user's modules, so the prefix
# is dropped. The look-ahead keeps user classes such as ``NNCFBackbone`` or ``NNCFLinearHead``.
_NNCF_CLASS_PREFIX = re.compile(
    r"NNCF(?=(?:Conv[123]d|ConvTranspose[123]d|Linear|Embedding|EmbeddingBag|BatchNorm[123]d"
    r"|GroupNorm|LayerNorm|InstanceNorm[123]d)(?![A-Za-z0-9_]))|NNCFUser(?=[A-Za-z_]\w*\\?\[)"
)
# NNCF 2.x named Python operators by their magic method (``x + y`` -> ``__add___0``). Under a
# ``TorchFunctionMode`` torch reports most of them as the tensor method they call, which
# ``op_base_name`` then shortens; this table is what each NNCF magic name becomes here (checked
# against torch in tests/graph/test_nncf_scope_names.py). Magic names not listed only lose
# their underscores (``__getitem__`` -> ``getitem``, ``__rsub__`` -> ``rsub``).
NNCF_MAGIC_OP_NAMES: dict[str, str] = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add_",
    "__sub__": "sub", "__isub__": "sub_",
    "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul_",
    "__truediv__": "div", "__div__": "div", "__itruediv__": "div_", "__idiv__": "div_",
    "__rtruediv__": "rdiv", "__ifloordiv__": "floor_divide_", "__ipow__": "pow_",
    "__mod__": "remainder", "__rand__": "bitwise_and", "__ror__": "bitwise_or", "__rxor__": "bitwise_xor",
}  # fmt: skip
# The other magic methods NNCF 2.x traced (nncf/torch/dynamic_graph/patch_pytorch.py).
_NNCF_MAGIC_PLAIN = (
    "abs", "and", "eq", "floordiv", "ge", "getitem", "gt", "iand", "invert", "ior", "ixor", "le", "lt",
    "matmul", "ne", "neg", "or", "pow", "rdiv", "rfloordiv", "rmatmul", "rpow", "rsub", "xor",
)  # fmt: skip
_NNCF_MAGIC = re.compile(
    r"(?<![A-Za-z0-9])__("
    + "|".join(sorted({m[2:-2] for m in NNCF_MAGIC_OP_NAMES} | set(_NNCF_MAGIC_PLAIN), key=len, reverse=True))
    + r")__"
)
# NNCF 2.x traced ``torch.relu_`` under its own name (``ReLU[relu]/relu__0`` for an in-place
# nn.ReLU), where nncompress sees ``F.relu(x, inplace=True)`` and names it ``relu_0``.
_NNCF_INPLACE_RELU = re.compile(r"(?<![A-Za-z0-9_])relu__(?=\d|\\d|\[)")


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


def _nncf_magic_to_ours(match: re.Match[str]) -> str:
    magic = match.group(0)
    return NNCF_MAGIC_OP_NAMES.get(magic, magic[2:-2])


def normalize_scope_pattern(pattern: str) -> str:
    """Rewrite NNCF 2.x's spelling in a scope pattern into nncompress's operation names.

    ``NNCFConv2d[conv1]`` -> ``Conv2d[conv1]`` (NNCF's wrapper classes; ``NNCFUserFoo[x]`` ->
    ``Foo[x]``) and the magic-method op names ``__add__``, ``__iadd__``, ``__mul__``,
    ``__getitem__``... -> ``add``, ``add_``, ``mul``, ``getitem`` (see :data:`NNCF_MAGIC_OP_NAMES`).
    Patterns already written with nncompress's names are returned unchanged. The call index is
    kept as written: NNCF counted ``x + y`` and ``torch.add`` apart, nncompress counts both as
    ``add``, so in a scope that mixes the two the indices differ (the capture report lists ours).

    :param pattern: one ``ignored_scopes`` / ``target_scopes`` entry, with or without ``{re}``.
    :return: the pattern in nncompress's names.
    """
    return _NNCF_MAGIC.sub(_nncf_magic_to_ours, _NNCF_CLASS_PREFIX.sub("", pattern))


@lru_cache(maxsize=1024)
def _regex_for(pattern: str) -> re.Pattern[str]:
    """The compiled regex of a ``{re}`` pattern (without the prefix), NNCF names translated."""
    regex = normalize_scope_pattern(pattern)
    # ``relu__`` (NNCF's in-place ReLU) matches both ``relu_`` and ``relu__`` here.
    return re.compile(_NNCF_INPLACE_RELU.sub("relu_?_", regex))


@lru_cache(maxsize=1024)
def _plain_alternatives(pattern: str) -> tuple[str, ...]:
    """The names a plain (non-regex) pattern stands for: as written and in nncompress's names."""
    normalized = normalize_scope_pattern(pattern).rstrip("/")
    names = {pattern.rstrip("/"), normalized}
    if _NNCF_INPLACE_RELU.search(normalized):
        names.add(_NNCF_INPLACE_RELU.sub("relu_", normalized))
    return tuple(sorted(names))


def compile_scope_regex(regex: str) -> re.Pattern[str]:
    """Compile a regular expression over op names, accepting NNCF 2.x's names in it.

    :param regex: the expression, without the ``{re}`` prefix.
    :return: the compiled expression.
    :raises re.error: if it is not a regular expression.
    """
    return _regex_for(regex)


def scope_name_matches(name: str, pattern: str) -> bool:
    """Whether an op or module name equals a plain (non-regex) name, NNCF 2.x spellings included.

    :param name: an operation name such as ``Net/add_0`` or a module name such as ``encoder.fc``.
    :param pattern: a name as the user wrote it, e.g. ``Net/__add___0``.
    :return: ``True`` if they name the same thing.
    """
    return name in _plain_alternatives(pattern)


def scope_matches(name: str, pattern: str) -> bool:
    """Whether an operation name matches one scope pattern.

    ``{re}<regex>``: ``re.search`` of the regex in the name. Otherwise the name must equal the
    pattern, or the pattern must be one of the name's module scopes (a prefix ending at ``/``).
    NNCF 2.x's names are accepted in both forms (see :func:`normalize_scope_pattern`):
    ``Inception3/__add___0`` matches ``Inception3/add_0``, ``{re}.*__mul__.*`` matches every
    ``mul`` op and ``ResNet/NNCFConv2d[conv1]/conv2d_0`` matches ``ResNet/Conv2d[conv1]/conv2d_0``.

    :param name: operation name, e.g. ``Net/Conv2d[conv1]/conv2d_0``.
    :param pattern: one entry of ``ignored_scopes`` / ``target_scopes``.
    :return: ``True`` if it matches.
    """
    if pattern.startswith(REGEX_PREFIX):
        return _regex_for(pattern[len(REGEX_PREFIX) :]).search(name) is not None
    return any(name == p or name.startswith(p + "/") for p in _plain_alternatives(pattern))
