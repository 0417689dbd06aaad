"""The one table of built algorithms: config ``algorithm`` name -> builder class."""

from __future__ import annotations

from .base import BaseBuilder
from .quantization.algo import QuantizationBuilder
from .sparsity.const import ConstSparsityBuilder
from .sparsity.magnitude import MagnitudeSparsityBuilder

BUILDERS: dict[str, type[BaseBuilder]] = {
    MagnitudeSparsityBuilder.algorithm: MagnitudeSparsityBuilder,
    ConstSparsityBuilder.algorithm: ConstSparsityBuilder,
    QuantizationBuilder.algorithm: QuantizationBuilder,
}
