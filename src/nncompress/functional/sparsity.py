"""Sparsity math: magnitude importance, thresholds and binary masks; RB (L0) masks and loss.

Tensor in, tensor (or float) out; nothing here knows about modules. The formulas follow legacy
NNCF 2.x magnitude sparsity (``nncf/torch/sparsity/magnitude/functions.py`` and
``MagnitudeSparsityController`` in ``nncf/torch/sparsity/magnitude/algo.py``), except for how a
threshold is picked from a level, which is documented at :func:`local_threshold`.

A typical use, once per change of the level (not per training step)::

    importances = [weight_importance(w, "normed_abs") for w in weights]
    t = global_threshold(importances, level)
    masks = [binary_mask(imp, t) for imp in importances]

NNCF 2.x defaults: ``params.weight_importance`` is ``"normed_abs"``
(:data:`DEFAULT_WEIGHT_IMPORTANCE`); ``params.sparsity_level_setting_mode`` is ``"global"``
(one threshold over all sparsified weights, :func:`global_threshold`; ``"local"`` is one
threshold per weight, :func:`local_threshold`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from nncompress.errors import InvalidArgumentError

WEIGHT_IMPORTANCE_MODES: tuple[str, ...] = ("abs", "normed_abs")
DEFAULT_WEIGHT_IMPORTANCE: str = "normed_abs"


def _check_level(level: float) -> None:
    """Raise unless ``level`` is in ``[0, 1]`` (NaN included in the refusal)."""
    if not 0.0 <= level <= 1.0:
        raise InvalidArgumentError(f"level must be a sparsity level in [0, 1], got {level!r}")


def weight_importance(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Importance of each weight element, as NNCF's ``WEIGHT_IMPORTANCE_FUNCTIONS``.

    - ``"abs"``: ``|w|``;
    - ``"normed_abs"``: ``|w| / ||w||_2``, the L2 norm taken over the whole tensor (NNCF's
      ``torch.abs(weight) / weight.norm(2)``). An all-zero weight gets importance 0 here, where
      NNCF would divide 0 by 0 and get NaN: the norm is clamped at the dtype's smallest normal
      number, which changes nothing for any weight with a non-zero element of normal size.

    >>> weight_importance(torch.tensor([3.0, -4.0]), "normed_abs")
    tensor([0.6000, 0.8000])

    :param weight: a floating-point weight of any shape.
    :param mode: one of :data:`WEIGHT_IMPORTANCE_MODES` (NNCF default
        :data:`DEFAULT_WEIGHT_IMPORTANCE`).
    :return: a tensor of ``weight``'s shape, dtype and device, detached from autograd.
    :raises InvalidArgumentError: for an unknown ``mode`` or a non-floating-point ``weight``.
    """
    if mode not in WEIGHT_IMPORTANCE_MODES:
        raise InvalidArgumentError(f"mode must be one of {list(WEIGHT_IMPORTANCE_MODES)}, got {mode!r}")
    if not weight.is_floating_point():
        raise InvalidArgumentError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    weight = weight.detach()
    magnitude = weight.abs()
    if mode == "abs":
        return magnitude
    norm = torch.linalg.vector_norm(weight)  # 0-dim, over all elements
    return torch.div(magnitude, norm.clamp_min(torch.finfo(norm.dtype).tiny))


def _kth_smallest_threshold(flat: torch.Tensor, level: float) -> float:
    """Threshold that masks the ``round(level * n)`` smallest of the 1-D ``flat``."""
    k = round(level * flat.numel())
    if k == 0:
        return -math.inf
    return float(torch.kthvalue(flat, k).values.item())


def local_threshold(importance: torch.Tensor, level: float) -> float:
    """Threshold ``t`` so that keeping ``importance > t`` drops the ``level`` least important.

    With ``n = importance.numel()`` and ``k = round(level * n)`` (Python's ``round``, half to
    even), ``t`` is the ``k``-th smallest importance (``torch.kthvalue``, no full sort), or
    ``-inf`` when ``k == 0``. :func:`binary_mask` with ``t`` then zeroes exactly ``k`` elements
    when the importances are distinct; ties with ``t`` are dropped too, so with ties it zeroes
    at least ``k``. ``level = 0`` keeps everything, ``level = 1`` drops everything. NaN
    importances rank above every number (as in ``torch.sort``) and are always dropped.

    Difference from NNCF 2.x: NNCF sorts all importances and takes
    ``sorted[int((n - 1) * level)]``, which drops ``floor((n - 1) * level) + 1`` elements:
    always at least one (even at level 0), and for other levels it can differ from
    ``round(level * n)`` by one element (e.g. ``n = 101, level = 0.5``: NNCF 51, here 50). The two
    give the same threshold whenever the counts agree (e.g. ``n = 10``, any level in 0.1 steps
    above 0). NNCF also re-sorted every time the level changed; here one ``kthvalue`` is used.

    >>> local_threshold(torch.tensor([0.4, 0.1, 0.3, 0.2]), 0.5)
    0.20000000298023224

    :param importance: importances of any shape, e.g. from :func:`weight_importance`.
    :param level: fraction of elements to drop, in ``[0, 1]``.
    :return: the threshold, a Python float (an importance value, or ``-inf``).
    :raises InvalidArgumentError: if ``level`` is outside ``[0, 1]``.
    """
    _check_level(level)
    return _kth_smallest_threshold(importance.detach().reshape(-1), level)


def global_threshold(importances: Sequence[torch.Tensor], level: float) -> float:
    """One threshold over all ``importances`` together (NNCF's ``"global"`` level-setting mode).

    Same rule as :func:`local_threshold` applied to all elements at once: with ``n`` the total
    element count, masking every tensor with :func:`binary_mask` and the returned ``t`` drops
    ``round(level * n)`` elements in total when all importances are distinct. Layers end up
    with different sparsities. The importances are concatenated once (promoted to a common
    dtype; they must be on one device); an empty sequence gives ``-inf``. With mixed dtypes
    ``t`` is exact for the promoted dtype, so counts can be off where a lower-precision
    tensor rounds onto ``t``.

    :param importances: importance tensors of any shapes, e.g. one per sparsified weight.
    :param level: fraction of all elements to drop, in ``[0, 1]``.
    :return: the threshold, a Python float (an importance value, or ``-inf``).
    :raises InvalidArgumentError: if ``level`` is outside ``[0, 1]``.
    """
    _check_level(level)
    if len(importances) == 0:
        return -math.inf
    flat = torch.cat([importance.detach().reshape(-1) for importance in importances])
    return _kth_smallest_threshold(flat, level)


def binary_mask(importance: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep mask ``(importance > threshold)`` as 1/0 numbers, as NNCF's ``calc_magnitude_binary_mask``.

    >>> binary_mask(torch.tensor([0.4, 0.1, 0.3]), 0.1)
    tensor([1., 0., 1.])

    :param importance: importances of any shape.
    :param threshold: from :func:`local_threshold` or :func:`global_threshold`; ``-inf`` keeps
        everything (except NaN importances), ``+inf`` drops everything.
    :return: a tensor of ``importance``'s shape, dtype and device: 1 keep, 0 drop.
    :raises InvalidArgumentError: if ``threshold`` is NaN (it would silently drop everything).
    """
    if math.isnan(threshold):
        raise InvalidArgumentError(f"threshold must be a number or +-inf, got {threshold!r}")
    return (importance.detach() > threshold).to(importance.dtype)


def sparsity_rate(tensors: Sequence[torch.Tensor]) -> float:
    """Fraction of elements that are exactly zero, over all ``tensors`` together.

    ``sum(count of == 0) / sum(numel)``; ``-0.0`` counts as zero, NaN does not. Zero elements
    in total (or an empty sequence) give ``0.0``.

    >>> sparsity_rate([torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])])
    0.75

    :param tensors: tensors of any shapes, dtypes and devices (weights or masks).
    :return: the fraction of zeros, in ``[0, 1]``.
    """
    total = sum(tensor.numel() for tensor in tensors)
    if total == 0:
        return 0.0
    nonzero = sum(int(torch.count_nonzero(tensor).item()) for tensor in tensors)
    return (total - nonzero) / total


# --- regularization-based (RB) sparsity ----------------------------------------------------------
#
# NNCF 2.x ``nncf/torch/sparsity/rb``: every sparsified weight W gets a trainable tensor of mask
# logits m of W's shape, initialised to logit(0.99). A weight element is kept when
# sigmoid(m) > 1/2, i.e. m > 0 (the eval-time mask). In training, before the loss freezes it,
# logistic noise is added first: keep = m + logit(u) > 0 with u ~ U(eps, 1 - eps) drawn afresh on
# every forward, so an element is kept with probability sigmoid(m). The threshold is straight
# through: the gradient of the 0/1 mask with respect to m is that of sigmoid(m + logit(u)).

RB_INITIAL_KEEP_PROBABILITY: float = 0.99
"""sigmoid of the initial mask logits (NNCF 2.x: ``logit(torch.ones(shape) * 0.99)``)."""

RB_NOISE_EPS: float = 1e-6
"""The uniform noise is clamped to ``[eps, 1 - eps]`` before its logit (NNCF 2.x's ``eps``)."""

RB_LOSS_P: float = 0.05
"""The ``p`` of NNCF 2.x's ``SparseLoss``: the loss is ``((density - target) / p) ** 2``."""


def rb_initial_logits(weight: torch.Tensor) -> torch.Tensor:
    """Mask logits for ``weight``: ``logit(0.99)`` (about 4.595) everywhere, in float32 on its device.

    >>> rb_initial_logits(torch.zeros(2))
    tensor([4.5951, 4.5951])

    :param weight: the weight to be masked (for shape and device).
    :return: a new float32 tensor of ``weight``'s shape (NNCF kept the logits in float32 too).
    """
    p = RB_INITIAL_KEEP_PROBABILITY
    return torch.full(weight.shape, math.log(p / (1.0 - p)), dtype=torch.float32, device=weight.device)


def logistic_noise_(buffer: torch.Tensor, eps: float = RB_NOISE_EPS) -> torch.Tensor:
    """Fill ``buffer`` in place with ``logit(clamp(u, eps, 1 - eps))``, ``u ~ U(0, 1)`` (NNCF's noise).

    Two passes over the buffer (``uniform_``, then ``logit_`` which clamps), no allocation.

    :param buffer: a floating-point tensor, overwritten.
    :param eps: the clamp of ``u``, in ``(0, 0.5)``.
    :return: ``buffer``.
    :raises InvalidArgumentError: for ``eps`` outside ``(0, 0.5)``.
    """
    if not 0.0 < eps < 0.5:
        raise InvalidArgumentError(f"eps must be in (0, 0.5), got {eps!r}")
    return buffer.uniform_().logit_(eps)


class _RBMaskedWeight(torch.autograd.Function):
    """``weight * (z > 0)`` with ``z = logits + noise``; the threshold is straight through."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, weight: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor | None, lr_multiplier: float
    ) -> torch.Tensor:
        z = logits.detach() if noise is None else noise.add_(logits.detach())  # noise: ours, overwritten
        keep = z > 0
        ctx.save_for_backward(weight, z, keep)  # keep: 1 byte an element, saves a pass in backward
        ctx.lr_multiplier = lr_multiplier
        ctx.logits_dtype = logits.dtype
        return torch.where(keep, weight, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        weight, z, keep = ctx.saved_tensors
        ctx.done = True  # the noise buffer holding z may be drawn again (see rb_masked_weight)
        grad_weight = torch.where(keep, grad, 0.0) if ctx.needs_input_grad[0] else None
        grad_logits = None
        if ctx.needs_input_grad[1]:
            gw = grad * weight if ctx.lr_multiplier == 1.0 else grad * weight * ctx.lr_multiplier
            # d sigmoid(z) / dz = s (1 - s): one fused kernel given s
            grad_logits = torch.ops.aten.sigmoid_backward(gw, torch.sigmoid(z)).to(ctx.logits_dtype)
        return grad_weight, grad_logits, None, None


def rb_masked_weight(
    weight: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor | None = None, lr_multiplier: float = 1.0
) -> torch.Tensor:
    """``weight`` times RB's binary mask ``(logits + noise > 0)``, with NNCF's straight-through gradient.

    Forward: ``where(z > 0, weight, 0)`` with ``z = logits + noise`` (``z = logits`` when
    ``noise`` is ``None``: the eval-time or frozen mask). Backward, with ``g`` the incoming
    gradient and ``s = sigmoid(z)``::

        d/d weight = g * (z > 0)
        d/d logits = g * weight * s * (1 - s) * lr_multiplier

    which is NNCF 2.x's ``STThreshold(sigmoid(z))`` (threshold 0.5, gradient passed straight to
    ``sigmoid(z)``), with its ``compression_lr_multiplier`` gradient hook folded in. NNCF
    compares ``sigmoid(z) > 0.5`` in float32, which rounds to exactly 0.5 for ``z`` in ``(0, ~1e-7)``
    and then drops the element; ``z > 0`` keeps it (the same rule in exact arithmetic).

    :param weight: the weight, any shape and floating dtype.
    :param logits: the mask logits, ``weight``'s shape (float32).
    :param noise: logistic noise of that shape from :func:`logistic_noise_`, or ``None``. It
        is overwritten with ``z``, which the backward pass reads: a caller that reuses the
        buffer must not draw into it again until the output's ``grad_fn`` has ``done`` set
        (set by the backward pass) or is gone.
    :param lr_multiplier: factor on the gradient of ``logits`` (``compression_lr_multiplier``).
    :return: the masked weight, ``weight``'s shape and dtype.
    :raises InvalidArgumentError: for shapes that differ.
    """
    if logits.shape != weight.shape or (noise is not None and noise.shape != weight.shape):
        raise InvalidArgumentError(
            f"logits and noise must have the weight's shape {tuple(weight.shape)}, got {tuple(logits.shape)} and "
            f"{None if noise is None else tuple(noise.shape)}"
        )
    out: torch.Tensor = _RBMaskedWeight.apply(weight, logits, noise, lr_multiplier)
    return out


class _RBKeptCount(torch.autograd.Function):
    """Number of logits above 0 over several tensors, with the gradient of ``sum(sigmoid(m))``."""

    @staticmethod
    def forward(ctx: Any, lr_multiplier: float, *logits: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(*logits)
        ctx.lr_multiplier = lr_multiplier
        total = torch.zeros((), dtype=torch.float32, device=logits[0].device)
        for m in logits:
            total += torch.count_nonzero(m > 0)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scale = grad * ctx.lr_multiplier
        grads = [
            torch.ops.aten.sigmoid_backward(scale.expand_as(m), torch.sigmoid(m)) if needed else None
            for m, needed in zip(ctx.saved_tensors, ctx.needs_input_grad[1:])
        ]
        return (None, *grads)


def rb_kept_count(logits: Sequence[torch.Tensor], lr_multiplier: float = 1.0) -> torch.Tensor:
    """How many mask elements are kept, ``sum(m > 0)`` over all ``logits``, as a float32 scalar.

    The gradient is straight through, as NNCF's ``binary_mask(m).sum()``: ``d/dm = s (1 - s)``
    with ``s = sigmoid(m)``, times ``lr_multiplier``.

    >>> rb_kept_count([torch.tensor([1.0, -2.0]), torch.tensor([0.5])])
    tensor(2.)

    :param logits: the mask logits of every sparsified weight (at least one tensor).
    :param lr_multiplier: factor on the gradients (``compression_lr_multiplier``).
    :return: a 0-dim float32 tensor.
    :raises InvalidArgumentError: for an empty sequence.
    """
    if len(logits) == 0:
        raise InvalidArgumentError("rb_kept_count needs at least one tensor of mask logits")
    out: torch.Tensor = _RBKeptCount.apply(lr_multiplier, *logits)
    return out


def rb_sparsity_loss(kept: torch.Tensor, total: int, level: float, p: float = RB_LOSS_P) -> torch.Tensor:
    """NNCF 2.x's ``SparseLoss``: ``((kept / total - (1 - level)) / p) ** 2``.

    ``kept / total`` is the density of the eval-time masks, ``1 - level`` the target density.

    >>> round(float(rb_sparsity_loss(torch.tensor(60.0), 100, 0.5)), 4)
    4.0

    :param kept: from :func:`rb_kept_count`.
    :param total: the number of mask elements (> 0).
    :param level: the sparsity level the loss pulls towards, in ``[0, 1]``.
    :param p: the scale (NNCF: 0.05).
    :return: a 0-dim tensor.
    :raises InvalidArgumentError: for ``total <= 0``, ``p <= 0`` or a level outside ``[0, 1]``.
    """
    _check_level(level)
    if total <= 0 or not p > 0:
        raise InvalidArgumentError(f"total must be > 0 and p > 0, got total={total!r}, p={p!r}")
    return ((kept / total - (1.0 - level)) / p).pow(2)


__all__ = [
    "DEFAULT_WEIGHT_IMPORTANCE",
    "RB_INITIAL_KEEP_PROBABILITY",
    "RB_LOSS_P",
    "RB_NOISE_EPS",
    "WEIGHT_IMPORTANCE_MODES",
    "binary_mask",
    "global_threshold",
    "local_threshold",
    "logistic_noise_",
    "rb_initial_logits",
    "rb_kept_count",
    "rb_masked_weight",
    "rb_sparsity_loss",
    "sparsity_rate",
    "weight_importance",
]
