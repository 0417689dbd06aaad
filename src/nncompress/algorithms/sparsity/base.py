"""What the sparsity algorithms share: the mask module, the statistics, the controller base."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.api.compression import StripFormat
from nncompress.api.statistics import CompressionStatistics, format_table
from nncompress.errors import InvalidArgumentError
from nncompress.graph.capture import CapturedGraph, OpNode
from nncompress.graph.layout import InsertionCommand, Priority, TargetPoint, TargetType, TransformationLayout
from nncompress.torch.runtime import get_runtime

from ..base import BaseController

SPARSIFIABLE_OPS = frozenset(
    {
        "conv1d", "conv2d", "conv3d",
        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
        "linear", "matmul", "mm", "bmm", "addmm",
        "embedding", "embedding_bag",  # NNCF 2.x sparsifies Embedding / EmbeddingBag tables too
    }
)  # fmt: skip


class SparsityMask(nn.Module):
    """Multiplies a weight by a 0/1 mask each time an op reads it.

    The mask is a buffer of the weight's shape and dtype (saved in ``state_dict``); the weight
    parameter itself is never changed during training, so masked-out weights keep their values
    and can come back when a lower level is set. ``bake_`` writes the mask into the weight.

    :param weight: the weight to mask (for shape, dtype and device).
    """

    masks_rows_read = True
    """An ``embedding`` op on the masked table masks just the rows it reads (:meth:`embedding_rows`)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=weight.dtype, requires_grad=False))
        self.mask: torch.Tensor

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """:return: ``weight * mask``."""
        return weight * self.mask

    def embedding_rows(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Run an ``embedding`` op on this mask's table, masking only the rows it reads.

        ``F.embedding(ids, W * M) == F.embedding(ids, W) * F.embedding(ids, M)``, values and
        gradients alike, at the cost of the rows looked up instead of the whole table. ``None``
        with ``max_norm`` (which renormalises the table in place): the caller masks the whole table.
        """
        if kwargs.get("max_norm") is not None or (len(args) > 3 and args[3] is not None):
            return None
        ids = args[0] if args else kwargs["input"]
        rows = func(*args, **kwargs)  # (..., d): gradients flow to the rows read
        return rows * torch.nn.functional.embedding(ids, self.mask)

    def bake_(self, weight: torch.Tensor, strip_format: StripFormat) -> bool:
        """Zero the masked weights in place; the mask is then no longer needed (any format)."""
        weight.data.mul_(self.mask)
        return True


@dataclass
class SparsifiedWeight:
    """One weight under a sparsity mask."""

    op: str
    weight: str
    shape: tuple[int, ...]
    mask: SparsityMask
    threshold: float | None = None


@dataclass(frozen=True)
class LayerSparsity:
    """A row of the per-layer statistics table."""

    name: str
    shape: tuple[int, ...]
    level: float
    threshold: float | None


@dataclass
class SparsityStatistics:
    """Sparsity statistics of one algorithm.

    :param algorithm: ``magnitude_sparsity`` or ``const_sparsity``.
    :param model_level: as NNCF 2.x: zeros over all parameters of the model itself (sparsified
        weights counted with their masks applied; the modules nncompress inserted not counted).
    :param layers_level: zeros of the masked sparsified weights over their size.
    :param target_level: the level the schedule heads for (``None`` for const sparsity).
    :param current_level: the level currently set (``None`` for const sparsity).
    :param layers: one row per sparsified weight.
    """

    algorithm: str
    model_level: float
    layers_level: float
    target_level: float | None = None
    current_level: float | None = None
    layers: list[LayerSparsity] = field(default_factory=list)

    def to_str(self) -> str:
        """Summary and per-layer tables."""
        summary = [("sparsity level of the whole model", self.model_level),
                   ("sparsity level of the sparsified layers", self.layers_level)]
        if self.current_level is not None:
            summary.append(("sparsity level set by the schedule", self.current_level))
        if self.target_level is not None:
            summary.append(("target sparsity level", self.target_level))
        rows = [
            (r.name, "x".join(map(str, r.shape)), r.level, "-" if r.threshold is None else f"{r.threshold:.4g}")
            for r in self.layers
        ]
        return "\n".join([
            format_table(("statistic", "value"), summary),
            format_table(("layer", "weight shape", "sparsity level", "threshold"), rows),
        ])

    def to_dict(self) -> dict[str, float]:
        """Flat metrics, including ``layer/<name>`` levels."""
        out = {"model_level": self.model_level, "layers_level": self.layers_level}
        if self.current_level is not None:
            out["current_level"] = self.current_level
        if self.target_level is not None:
            out["target_level"] = self.target_level
        out.update({f"layer/{r.name}": r.level for r in self.layers})
        return out

    def __str__(self) -> str:
        return self.to_str()


def mask_layout(
    nodes: list[OpNode], graph: CapturedGraph, model: nn.Module, group: str,
    make_mask: Callable[[torch.Tensor], SparsityMask] = SparsityMask,
) -> tuple[TransformationLayout, list[SparsifiedWeight]]:
    """A mask on the main weight of each op, and the records the controller keeps.

    A weight read only by its owning module is swapped in around that module's forward (one mask
    per forward); others go through the hook mode, and so do embedding tables whose mask can
    mask just the rows looked up (:attr:`SparsityMask.masks_rows_read`).

    :param nodes: the selected ops (each with a main weight).
    :param graph: the captured graph (to see which modules read each weight).
    :param model: the model (to read the weights).
    :param group: the algorithm name.
    :param make_mask: builds the mask module from the (detached) weight.
    :return: the layout and one :class:`SparsifiedWeight` per op.
    """
    owner_only = graph.owner_only_weights()
    layout = TransformationLayout()
    records = []
    for node in nodes:
        w = node.weight
        assert w is not None  # selection only returns ops with a main weight
        mask = make_mask(model.get_parameter(w.qualified_name).detach())
        point = TargetPoint(TargetType.WEIGHT, w.module, param=w.param)
        local = w.qualified_name in owner_only and not (node.op == "embedding" and mask.masks_rows_read)
        layout.register(InsertionCommand(point, mask, group, Priority.SPARSIFICATION, local))
        records.append(SparsifiedWeight(node.name, w.qualified_name, w.shape, mask))
    return layout, records


class BaseSparsityController(BaseController):
    """Statistics and compression rate from the masked weights of the sparsified weights."""

    def __init__(self, model: nn.Module, builder: Any, weights: list[SparsifiedWeight]) -> None:
        super().__init__(model, builder)
        self.sparsified_weights = weights

    def _zeros(self, rec: SparsifiedWeight) -> int:
        """Zeros of a masked weight: masked out, or zero in the weight itself (as NNCF counts)."""
        with torch.no_grad():
            weight = self.model.get_parameter(rec.weight)
            return int(((rec.mask.mask == 0) | (weight == 0)).sum())

    @property
    def compression_rate(self) -> float:
        """Share of zeros in the masked sparsified weights (``statistics().layers_level``).

        Setting it sets the sparsity level, where the algorithm allows it (see
        :meth:`_set_compression_rate`).
        """
        zeros = sum(self._zeros(rec) for rec in self.sparsified_weights)
        total = sum(rec.mask.mask.numel() for rec in self.sparsified_weights)
        return zeros / total if total else 0.0

    @compression_rate.setter
    def compression_rate(self, level: float) -> None:
        self._set_compression_rate(level)

    def _set_compression_rate(self, level: float) -> None:
        raise InvalidArgumentError(
            f"{self.name} keeps the masks it has; its compression rate cannot be set (got {level!r})"
        )

    @property
    def maximal_compression_rate(self) -> float:
        """1.0: any level up to full sparsity can be set."""
        return 1.0

    def _target_and_current(self) -> tuple[float | None, float | None]:
        return None, None

    def _model_params(self) -> list[tuple[str, torch.Tensor]]:
        """The model's own parameters: those of the modules nncompress inserted left out."""
        runtime = get_runtime(self.model)
        inserted = {id(p) for p in runtime.parameters()} if runtime is not None else set()
        return [(n, p) for n, p in self.model.named_parameters() if id(p) not in inserted]

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """Model-level and per-layer sparsity levels, counted on the masked weights as NNCF 2.x."""
        layers = []
        zeros = total = 0
        for rec in self.sparsified_weights:
            z = self._zeros(rec)
            n = rec.mask.mask.numel()
            zeros += z
            total += n
            layers.append(LayerSparsity(rec.weight, rec.shape, z / n, rec.threshold))
        sparsified = {id(self.model.get_parameter(rec.weight)) for rec in self.sparsified_weights}
        model_zeros, model_total = zeros, total
        with torch.no_grad():
            for _, p in self._model_params():
                if id(p) not in sparsified:
                    model_zeros += int((p == 0).sum())
                    model_total += p.numel()
        target, current = self._target_and_current()
        stats = SparsityStatistics(
            self.name, model_zeros / model_total if model_total else 0.0, zeros / total if total else 0.0,
            target, current, layers,
        )
        result = CompressionStatistics()
        result.register(self.name, stats)
        return result
