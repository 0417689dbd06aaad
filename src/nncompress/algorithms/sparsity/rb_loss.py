"""RB sparsity's trainable masks and the loss that pulls their density to the target.

:class:`RBMask` sits on a weight as :class:`~.base.SparsityMask` does, but its mask is learned:
a float32 parameter of mask logits (``state_dict`` key ``...logits``), kept where ``logits > 0``.
:class:`RBSparsityLoss` is NNCF 2.x's ``SparseLoss``. The math is in
:mod:`nncompress.functional.sparsity` (``rb_*``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nncompress.api.compression import CompressionLoss, StripFormat
from nncompress.errors import CompressionStateError, InvalidArgumentError
from nncompress.functional import sparsity as fsp

from ..state_fields import state_bool, state_level
from .base import SparsityMask


class RBMask(SparsityMask):
    """A learned 0/1 mask: ``weight * (logits + noise > 0)`` while training, ``weight * (logits > 0)`` else.

    Logistic noise is drawn on every forward in training mode until the loss freezes the mask
    (NNCF 2.x: ``self.training and not self.frozen``), into a buffer allocated once. After the
    freeze the mask has no noise but, as in NNCF, its logits keep the task loss's gradient.
    The ``mask`` buffer holds the eval-time mask; it is refreshed by :meth:`refresh_`, which
    statistics, ``state_dict`` and strip call (NNCF saved it as ``_binary_mask`` the same way).

    :param weight: the weight to mask (for shape, dtype and device).
    :param lr_multiplier: ``compression_lr_multiplier``: factor on the logits' gradients.
    """

    def __init__(self, weight: torch.Tensor, lr_multiplier: float = 1.0) -> None:
        super().__init__(weight)
        self.logits = nn.Parameter(fsp.rb_initial_logits(weight))
        self.register_buffer("_noise", torch.empty(0, device=weight.device), persistent=False)
        self._noise: torch.Tensor
        self.frozen = False
        self.lr_multiplier = float(lr_multiplier)
        self._pending: weakref.ref[Any] | None = None  # grad_fn whose backward reads the noise buffer

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """:return: the masked weight (noisy mask in training until frozen)."""
        if self.training and not self.frozen:
            out = fsp.rb_masked_weight(weight, self.logits, self._draw_noise(), self.lr_multiplier)
            if out.grad_fn is not None:
                object.__setattr__(self, "_pending", weakref.ref(out.grad_fn))
            return out
        if not torch.is_grad_enabled():
            return torch.where(self.logits > 0, weight, 0.0)
        return fsp.rb_masked_weight(weight, self.logits, None, self.lr_multiplier)

    def _draw_noise(self) -> torch.Tensor:
        """Fresh logistic noise in the buffer; a new buffer if the last one still awaits its backward."""
        buf = self._noise
        pending = self._pending() if self._pending is not None else None
        busy = pending is not None and not getattr(pending, "done", False)
        if busy or buf.shape != self.logits.shape or buf.device != self.logits.device:
            buf = torch.empty_like(self.logits, requires_grad=False)
            self._noise = buf
        return fsp.logistic_noise_(buf)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pending"] = None  # a weak reference to an autograd node: not copied or pickled
        return state

    def refresh_(self) -> torch.Tensor:
        """Set the ``mask`` buffer to the eval-time mask ``logits > 0``; :return: the buffer."""
        with torch.no_grad():
            self.mask.copy_(self.logits > 0)
        return self.mask

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        self.refresh_()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    masks_rows_read = False  # as NNCF 2.x, one mask is drawn for the whole table per forward

    def embedding_rows(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """``None``: as NNCF 2.x, one mask is drawn for the whole table per forward."""
        return None

    def bake_(self, weight: torch.Tensor, strip_format: StripFormat) -> bool:
        """Zero the weights the eval-time mask drops, in place (any format)."""
        weight.data.mul_(self.refresh_())
        return True

    def keep_probability_sum(self) -> float:
        """``sum(sigmoid(logits))``: the expected number of kept elements under the noise."""
        with torch.no_grad():
            return float(torch.sigmoid(self.logits).sum())


class RBSparsityLoss(nn.Module, CompressionLoss):
    """NNCF 2.x's ``SparseLoss``: ``((kept / total - (1 - level)) / p) ** 2`` with ``p = 0.05``.

    ``kept`` counts the elements the eval-time masks keep over all sparsified weights, with a
    straight-through gradient (:func:`~nncompress.functional.sparsity.rb_kept_count`). Disabled
    (frozen, at ``sparsity_freeze_epoch``), the loss is 0 and the masks draw no noise.

    :param masks: the masks of the sparsified weights (not registered as sub-modules here).
    :param lr_multiplier: ``compression_lr_multiplier`` (factor on the logits' gradients).
    :param p: NNCF's ``p``.
    """

    def __init__(self, masks: Sequence[RBMask], lr_multiplier: float = 1.0, p: float = fsp.RB_LOSS_P) -> None:
        super().__init__()
        self._masks = list(masks)  # a plain list: the masks are the runtime's sub-modules
        self.total = sum(m.logits.numel() for m in self._masks)
        self.lr_multiplier = lr_multiplier
        self.p = p
        self.target_level = 0.0
        self.disabled = False

    @property
    def target(self) -> float:
        """NNCF's ``target``: the density aimed at, ``1 - target_level``."""
        return 1.0 - self.target_level

    def set_target_level(self, level: float) -> None:
        """Aim at sparsity ``level`` (NNCF's ``set_target_sparsity_loss``).

        :raises InvalidArgumentError: for a level outside ``[0, 1)``, NaN included.
        """
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) < 1.0:
            raise InvalidArgumentError(f"sparsity level must be a number in [0, 1), got {level!r}")
        self.target_level = float(level)

    def disable(self, disabled: bool = True) -> None:
        """Freeze (or, with ``False``, unfreeze) the masks: no noise and a zero loss while frozen."""
        self.disabled = bool(disabled)
        for m in self._masks:
            m.frozen = self.disabled

    def calculate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """:return: the loss, a 0-dim tensor (0 when disabled or nothing is sparsified)."""
        if self.disabled or not self._masks:
            device = self._masks[0].logits.device if self._masks else None
            return torch.zeros((), device=device)
        kept = fsp.rb_kept_count([m.logits for m in self._masks], self.lr_multiplier)
        return fsp.rb_sparsity_loss(kept, self.total, self.target_level, self.p)

    forward = calculate

    def mean_keep_probability(self) -> float:
        """Mean of ``sigmoid(logits)`` over all mask elements (NNCF's ``mean_sparse_prob``)."""
        return sum(m.keep_probability_sum() for m in self._masks) / self.total if self.total else 1.0

    def get_state(self) -> dict[str, Any]:
        """:return: ``{"target_level": ..., "disabled": ...}``."""
        return {"target_level": self.target_level, "disabled": self.disabled}

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Check the fields :meth:`load_state` reads, changing nothing.

        :raises CompressionStateError: for a missing or bad field.
        """
        where = "loss_state"
        level = state_level(state, "target_level", where)
        if level >= 1.0:
            raise CompressionStateError(f"{where}.target_level: expected a level in [0, 1), got {level!r}")
        state_bool(state, "disabled", where)

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore target and frozen flag (the logits come from the model's ``state_dict``).

        :raises CompressionStateError: for a missing or bad field; nothing is changed then.
        """
        self.check_state(state)
        self.target_level = float(state["target_level"])
        self.disable(bool(state["disabled"]))
