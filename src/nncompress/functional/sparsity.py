"""Magnitude-sparsity math: weight importance, thresholds for a level, binary masks.

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


__all__ = [
    "DEFAULT_WEIGHT_IMPORTANCE",
    "WEIGHT_IMPORTANCE_MODES",
    "binary_mask",
    "global_threshold",
    "local_threshold",
    "sparsity_rate",
    "weight_importance",
]
