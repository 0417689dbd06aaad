"""The one table of built algorithms: config ``algorithm`` name -> builder class."""

from __future__ import annotations

from .base import BaseBuilder
from .distillation.algo import KnowledgeDistillationBuilder
from .pruning.algo import FilterPruningBuilder
from .quantization.algo import QuantizationBuilder
from .sparsity.const import ConstSparsityBuilder
from .sparsity.magnitude import MagnitudeSparsityBuilder
from .sparsity.rb import RBSparsityBuilder

BUILDERS: dict[str, type[BaseBuilder]] = {
    MagnitudeSparsityBuilder.algorithm: MagnitudeSparsityBuilder,
    ConstSparsityBuilder.algorithm: ConstSparsityBuilder,
    RBSparsityBuilder.algorithm: RBSparsityBuilder,
    QuantizationBuilder.algorithm: QuantizationBuilder,
    KnowledgeDistillationBuilder.algorithm: KnowledgeDistillationBuilder,
    FilterPruningBuilder.algorithm: FilterPruningBuilder,
}
