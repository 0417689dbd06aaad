"""Example inputs for capture and export, and batches of ``init_data``.

An example input comes from the config's ``input_info`` (shape, dtype, keyword, filler) or from
the user's ``example_input``. ``init_data`` batches may be ``(inputs, target)`` pairs, bare
tensors or dicts of keyword inputs; :func:`split_batch` turns each into ``(args, kwargs)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nncompress.config import InputInfo
from nncompress.errors import InputInfoError

_DTYPES = {
    "float": torch.float32,
    "float32": torch.float32,
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "double": torch.float64,
    "float64": torch.float64,
    "long": torch.int64,
    "int64": torch.int64,
    "int": torch.int32,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}

ModelInputs = tuple[tuple[Any, ...], dict[str, Any]]


def tensor_from_info(info: InputInfo, seed: int = 0) -> torch.Tensor:
    """One input tensor as ``input_info`` describes it.

    Fillers: ``zeros``, ``ones`` (the default, as in NNCF 2.x; a valid token id too) and
    ``random`` (standard normal for floats, 0 or 1 for integers).

    :param info: one ``input_info`` entry.
    :param seed: seed of the random filler, so capture is reproducible.
    :return: the tensor.
    """
    dtype = _DTYPES.get(info.dtype)
    if dtype is None:
        raise InputInfoError(f"input_info type {info.dtype!r} is not supported; allowed: {sorted(_DTYPES)}")
    shape = tuple(info.shape)
    filler = info.filler or "ones"
    if filler == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if filler == "ones":
        return torch.ones(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(0, 2, shape, generator=gen).to(dtype)


def inputs_from_infos(infos: Sequence[InputInfo]) -> ModelInputs:
    """Positional and keyword example inputs built from ``input_info`` entries.

    :param infos: the config's ``input_info`` entries, in order.
    :return: ``(args, kwargs)`` for the model's forward.
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for i, info in enumerate(infos):
        t = tensor_from_info(info, seed=i)
        if info.keyword:
            kwargs[info.keyword] = t
        else:
            args.append(t)
    return tuple(args), kwargs


def _parameter_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The floating-point dtype of the model's first floating-point parameter or buffer."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def dtype_mismatch(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                   error: BaseException) -> str | None:
    """Explain a forward that failed on an input of the wrong dtype (int64 images into a float conv).

    Integer inputs are right for token ids, so dtypes are only questioned once the forward has
    failed with an error about a dtype.

    :param model: the model that failed.
    :param args: its positional inputs.
    :param kwargs: its keyword inputs.
    :param error: what the forward raised (the cause chain is read too).
    :return: a sentence naming each suspicious input, its dtype and the allowed dtype, or ``None``.
    """
    text = ""
    seen: BaseException | None = error
    while seen is not None and len(text) < 10_000:
        text += f" {seen}"
        seen = seen.__cause__
    if not re.search(r"scalar type|dtype|Input type|weight type|should be the same|must have the same", text):
        return None
    want = _parameter_dtype(model)
    if want is None:
        return None
    inputs = [(f"input {i}", t) for i, t in enumerate(args)] + [(f"input {k!r}", t) for k, t in kwargs.items()]
    bad = [(name, t.dtype) for name, t in inputs if isinstance(t, torch.Tensor) and t.dtype != want]
    if not bad:
        return None
    listed = ", ".join(f"{name} is {str(dtype).replace('torch.', '')}" for name, dtype in bad)
    allowed = str(want).replace("torch.", "")
    integer = any(not dtype.is_floating_point and not dtype.is_complex for _, dtype in bad)
    example = f"x.to(torch.{allowed}) / 255 for 8-bit images" if integer else f"x.to(torch.{allowed})"
    return (
        f"{listed}, but the model's parameters are {allowed}: inputs that feed its layers must be {allowed} "
        f"(integer tensors only where the model takes ids, e.g. an embedding); convert them first, e.g. {example}"
    )


def split_batch(batch: Any) -> ModelInputs:
    """Model inputs of one batch: ``(x, y)`` -> ``((x,), {})``; ``x`` -> ``((x,), {})``;
    ``{"input_ids": ...}`` -> ``((), {...})``; ``((a, b), y)`` -> ``((a, b), {})``.

    :param batch: one item of ``init_data`` or ``example_input``.
    :return: ``(args, kwargs)``.
    """
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, Mapping):
            return (), dict(first)
        if isinstance(first, (list, tuple)):
            return tuple(first), {}
        return (first,), {}
    raise InputInfoError(
        f"cannot take model inputs from a batch of type {type(batch).__name__}; allowed: a tensor, "
        "an (inputs, target) pair, or a dict of keyword inputs"
    )


def parse_model_args(model_args: tuple[Any, ...] | None) -> ModelInputs | None:
    """``model_args`` of ``export_model``: a tuple whose last item, if a dict, holds keyword args.

    ``(a, b, {"x": None, "y": y})``, ``(a, b, {})`` or ``({"x": None, "y": y},)``. Keyword
    arguments given as ``None`` are left out.
    """
    if model_args is None:
        return None
    if not isinstance(model_args, tuple):
        model_args = (model_args,)
    if model_args and isinstance(model_args[-1], Mapping):
        kwargs = {k: v for k, v in model_args[-1].items() if v is not None}
        return tuple(model_args[:-1]), kwargs
    return tuple(model_args), {}
