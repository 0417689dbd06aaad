"""Staged quantization: weights and activations quantizers switch on at their start epochs.

Config ``params``: ``weights_quant_start_epoch`` and ``activations_quant_start_epoch`` (NNCF 2.x
defaults: 1 and 1 when ``params`` is given). Without ``params`` every quantizer is on from the
start and the scheduler only counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..base import BaseCompressionScheduler
from .quantizers import FakeQuantizer

DEFAULT_START_EPOCH = 1


class StagedQuantizationScheduler(BaseCompressionScheduler):
    """Enables each group of quantizers from its start epoch on.

    :param quantizers: every fake quantizer of the model.
    :param weights_start: first epoch with quantized weights.
    :param activations_start: first epoch with quantized activations.
    """

    def __init__(self, quantizers: Sequence[FakeQuantizer], weights_start: int, activations_start: int) -> None:
        super().__init__()
        self.quantizers = list(quantizers)
        self.start = {"weights": weights_start, "activations": activations_start}
        self._apply()

    def _apply(self) -> None:
        for q in self.quantizers:
            q.enabled = self.current_epoch >= self.start[q.group]

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Move to the next epoch and switch quantizers on whose start epoch has come."""
        super().epoch_step(next_epoch)
        self._apply()

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the counters and the on/off state that goes with them."""
        super().load_state(state)
        self._apply()
