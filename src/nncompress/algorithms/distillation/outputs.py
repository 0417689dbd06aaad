"""Which output tensors of a model knowledge distillation compares, and with what.

A model may return a tensor or any nesting of tuples, lists, dicts, dataclasses and Hugging Face
``ModelOutput`` objects. As NNCF 2.x, the outputs are walked in order and each tensor is named by
its path (``output[0]``, ``output['logits']``); the student's tensors that require gradients are
distilled, each against the teacher's tensor at the same path. Tensors with fewer than 2
dimensions are taken for loss values the model computed itself (NNCF's reading: "most likely
loss") and skipped; ``"softmax"`` distils 2-D logits ``(batch, classes)`` only, ``"mse"`` any
tensor of 2 or more dimensions.

Unlike NNCF 2.x, which logged at debug level and added 0 when no tensor fitted (so distillation
silently did nothing), a forward where no output tensor fits raises :class:`DistillationError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from nncompress.errors import DistillationError

Path = tuple[Any, ...]
"""Keys and indices from the model's return value to one tensor."""

_MAX_DEPTH = 32


def flatten_outputs(obj: Any, path: Path = (), depth: int = 0) -> list[tuple[Path, torch.Tensor]]:
    """Every tensor in a model's return value, with its path, in traversal order.

    :param obj: a tensor, or a (nested) tuple, list, mapping (``ModelOutput`` included) or
        dataclass holding tensors; other values (ints, strings, ``None``) hold none.
    :param path: the path of ``obj`` itself.
    :param depth: nesting depth so far (nesting deeper than 32 levels is not followed).
    :return: ``[(path, tensor), ...]``.
    """
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if depth >= _MAX_DEPTH:
        return []
    if isinstance(obj, Mapping):
        items: list[tuple[Any, Any]] = list(obj.items())
    elif isinstance(obj, (tuple, list)):
        items = list(enumerate(obj))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    else:
        return []
    found: list[tuple[Path, torch.Tensor]] = []
    for key, value in items:
        found += flatten_outputs(value, (*path, key), depth + 1)
    return found


def path_text(path: Path) -> str:
    """``("logits",)`` -> ``output['logits']``; ``()`` -> ``output``."""
    return "output" + "".join(f"[{k!r}]" for k in path)


def _shapes(leaves: list[tuple[Path, torch.Tensor]]) -> str:
    return ", ".join(f"{path_text(p)} {tuple(t.shape)}" for p, t in leaves) or "none"


def takes(kd_type: str, tensor: torch.Tensor) -> bool:
    """Whether a loss of ``kd_type`` distils this output tensor (2-D for softmax, >= 2-D for mse)."""
    return tensor.dim() == 2 if kd_type == "softmax" else tensor.dim() >= 2


def distillation_pairs(
    student: list[tuple[Path, torch.Tensor]], teacher: Any, kd_type: str
) -> tuple[list[tuple[Path, torch.Tensor, torch.Tensor]], list[Path]]:
    """Pair the student's distilled output tensors with the teacher's.

    :param student: the student's tensors that require gradients (from :func:`flatten_outputs`).
    :param teacher: the teacher's return value for the same inputs.
    :param kd_type: ``"softmax"`` or ``"mse"``.
    :return: ``([(path, student_tensor, teacher_tensor), ...], skipped)``: ``skipped`` names the
        tensors of 3 or more dimensions that ``"softmax"`` leaves out (0-D and 1-D ones are left
        out silently).
    :raises DistillationError: if the teacher has no tensor of the same shape at a student path,
        or no student tensor fits ``kd_type``.
    """
    by_path = dict(flatten_outputs(teacher))
    pairs, skipped = [], []
    for path, s in student:
        t = by_path.get(path)
        if t is None or t.shape != s.shape:
            found = "nothing" if t is None else f"shape {tuple(t.shape)}"
            raise DistillationError(
                f"knowledge_distillation: the student's {path_text(path)} has shape {tuple(s.shape)}, the teacher "
                f"gave {found} there (teacher outputs: {_shapes(list(by_path.items()))}); the model must return "
                "the same structure for the same inputs"
            )
        if takes(kd_type, s):
            pairs.append((path, s, t))
        elif s.dim() > 2:
            skipped.append(path)
    if not pairs:
        allowed = (
            "2-D logits (batch, classes)" if kd_type == "softmax" else "tensors of 2 or more dimensions"
        )
        raise DistillationError(
            f"knowledge_distillation type {kd_type!r}: no output tensor to distil; the outputs that require "
            f"gradients are {_shapes(student)}, and {kd_type!r} takes {allowed} (0-D and 1-D outputs are taken "
            "for losses and skipped). Return the logits from forward()"
            + (", reshape them to (batch, classes), or use type 'mse'" if kd_type == "softmax" else "")
        )
    return pairs, skipped
