"""Const sparsity: keep the zeros a pre-sparsified model already has, for fine-tuning.

The mask of each weight is ``weight != 0`` at build time and never changes, so weights that
are zero stay zero through training. Config: ``{"algorithm": "const_sparsity"}`` (plus scopes).
"""

from __future__ import annotations

from torch import nn

from nncompress.api.compression import CompressionStage
from nncompress.graph.layout import Priority, TransformationLayout

from ..base import BaseBuilder
from ..selection import select_weighted_ops
from .base import SPARSIFIABLE_OPS, BaseSparsityController, SparsifiedWeight, mask_layout


class ConstSparsityBuilder(BaseBuilder):
    """Masks every conv / linear / matmul weight in scope with its current non-zero pattern."""

    algorithm = "const_sparsity"
    priority = Priority.SPARSIFICATION

    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        graph = self._context.graph_for(model)
        nodes, self.report = select_weighted_ops(graph, self._section, SPARSIFIABLE_OPS)
        layout, self._weights = mask_layout(nodes, graph, model, self.algorithm)
        for rec in self._weights:
            weight = model.get_parameter(rec.weight).detach()
            rec.mask.mask.copy_((weight != 0).to(rec.mask.mask.dtype))
        return layout

    def build_controller(self, model: nn.Module) -> ConstSparsityController:
        """:return: the controller (its scheduler never changes anything)."""
        return ConstSparsityController(model, self, self._weights)


class ConstSparsityController(BaseSparsityController):
    """Holds the fixed masks; always FULLY_COMPRESSED."""

    def __init__(self, model: nn.Module, builder: BaseBuilder, weights: list[SparsifiedWeight]) -> None:
        super().__init__(model, builder, weights)

    def compression_stage(self) -> CompressionStage:
        """The masks are final from the start."""
        return CompressionStage.FULLY_COMPRESSED
