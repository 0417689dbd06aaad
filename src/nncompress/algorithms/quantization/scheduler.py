"""The quantization scheduler: staged start epochs, range re-initialisation, an optimizer check.

Config ``params``: ``weights_quant_start_epoch`` and ``activations_quant_start_epoch`` (NNCF 2.x
defaults: 1 and 1 when ``params`` is given, 0 without it: every quantizer on from the start). A
group whose start epoch is 0 is on at creation. When a group switches on at a later epoch, its
ranges are initialised again on ``init_data`` (as NNCF 2.x's staged scheduler did), since the
weights and activations moved while that group was off.

Every scheduler also checks once, a few training steps in, that the optimizer moves the
quantizers' steps (see :meth:`QuantizationScheduler.step`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..base import BaseCompressionScheduler
from .quantizers import FakeQuantizer

DEFAULT_START_EPOCH = 1
"""NNCF 2.x's start epoch of each group when ``params`` is given without it."""

OPTIMIZER_CHECK_STEP = 3
"""After this many training steps the scheduler checks that the optimizer updates the steps."""

Reinitialize = Callable[[list[FakeQuantizer]], None]


class QuantizationScheduler(BaseCompressionScheduler):
    """Switches each group of quantizers on from its start epoch and checks the optimizer.

    :param quantizers: every fake quantizer of the model.
    :param weights_start: first epoch with quantized weights.
    :param activations_start: first epoch with quantized activations.
    :param reinitialize: called with the quantizers of a group when it switches on after
        creation, to initialise their ranges again.
    """

    def __init__(
        self,
        quantizers: Sequence[FakeQuantizer],
        weights_start: int = 0,
        activations_start: int = 0,
        reinitialize: Reinitialize | None = None,
    ) -> None:
        super().__init__()
        self.quantizers = list(quantizers)
        self.start = {"weights": weights_start, "activations": activations_start}
        self._reinitialize = reinitialize
        self._snapshot: list[torch.Tensor] | None = None
        self._steps_seen = 0
        self._apply(initializing=False)

    def _on(self, group: str) -> bool:
        # before the first epoch_step the epoch is -1: a group starting at 0 is on already
        return max(self.current_epoch, 0) >= self.start[group]

    def _apply(self, initializing: bool) -> None:
        switched = [q for q in self.quantizers if self._on(q.group) and not q.enabled]
        for q in self.quantizers:
            q.enabled = self._on(q.group)
        if initializing and switched and self._reinitialize is not None:
            self._reinitialize(switched)

    def epoch_step(self, next_epoch: int | None = None) -> None:
        """Move to the next epoch; quantizers whose start epoch has come switch on, with new ranges."""
        super().epoch_step(next_epoch)
        self._apply(initializing=True)

    def step(self, next_step: int | None = None) -> None:
        """Move to the next training step.

        A few steps in (:data:`OPTIMIZER_CHECK_STEP`), once: if the quantizers' steps got
        gradients but none of them changed, the optimizer does not hold them (it was created
        before ``create_compressed_model`` from ``model.parameters()``), and a warning says so.
        """
        super().step(next_step)
        self._check_finite()
        if self._steps_seen > OPTIMIZER_CHECK_STEP:
            return
        if self._steps_seen == 0:
            self._snapshot = [q.scale.detach().clone() for q in self.quantizers]
        elif self._steps_seen == OPTIMIZER_CHECK_STEP and self._snapshot is not None:
            self._check_optimizer(self._snapshot)
            self._snapshot = None
        self._steps_seen += 1

    def _check_finite(self) -> None:
        """One check of every range per training step (one device sync): a range the last
        optimizer step made NaN or infinite raises, naming its quantizer, before the forward."""
        if not self.quantizers:
            return
        with torch.no_grad():
            total = torch.stack([q.parameter_sum() for q in self.quantizers]).sum()
            if math.isfinite(float(total)):
                return
        for q in self.quantizers:
            if not q.finite():
                q.raise_non_finite()

    def _check_optimizer(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            trained = [(q, old) for q, old in zip(self.quantizers, snapshot)
                       if q.enabled and q.scale.grad is not None and bool(q.scale.grad.any())]
            if trained and all(torch.equal(q.scale, old) for q, old in trained):
                warnings.warn(
                    f"the {len(trained)} quantizer steps that get gradients have not changed in "
                    f"{OPTIMIZER_CHECK_STEP} training steps: the optimizer does not update them. Create the "
                    "optimizer after create_compressed_model, or add them with "
                    "nnc.add_compression_parameters(optimizer, model)",
                    UserWarning,
                    stacklevel=3,
                )

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the counters and the on/off state that goes with them (ranges come from the
        model's ``state_dict``, so nothing is re-initialised)."""
        super().load_state(state)
        self._apply(initializing=False)
