"""Filter-pruning math: filter importance, how many filters a level prunes, keep masks.

Tensor in, tensor (or int) out; nothing here knows about modules or channel groups. The metrics
follow NNCF 2.x (``nncf/torch/pruning/filter_pruning/functions.py``):

=====================  ==============================================================
``"L2"`` (default)     ``||W_f||_2``: the L2 norm of filter ``f`` (all its weights)
``"L1"``               ``||W_f||_1``
``"geometric_median"`` ``sum_g ||W_f - W_g||_2``: a filter close to all others (near
                       their geometric median) is the easiest to replace, so least important
=====================  ==============================================================

where filter ``f`` is slice ``f`` of the weight along ``dim`` (0 for convolutions, 1 for
transposed convolutions). With ``normalize=True`` (NNCF's ranking across layers, ``all_weights``)
the weight is first divided by its L2 norm over the whole tensor, so that layers of different
scales compare.

Which filters a level removes (NNCF 2.x semantics, differences documented per function):

- per group (``all_weights: false``): :func:`pruned_count` of the group's channels, the least
  important ones (:func:`keep_lowest_pruned`);
- across groups (``all_weights: true``): one ranking of every filter of every group,
  :func:`global_keep_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nncompress.errors import InvalidArgumentError

FILTER_IMPORTANCES: tuple[str, ...] = ("L2", "L1", "geometric_median")
"""Values of ``params.filter_importance``."""

DEFAULT_FILTER_IMPORTANCE: str = "L2"
"""NNCF 2.x default of ``params.filter_importance``."""


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level <= 1.0:
        raise InvalidArgumentError(f"level must be a pruning level in [0, 1], got {level!r}")


def filter_importance(weight: torch.Tensor, metric: str = DEFAULT_FILTER_IMPORTANCE, dim: int = 0,
                      normalize: bool = False) -> torch.Tensor:
    """Importance of each filter (slice along ``dim``) of a weight.

    >>> w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    >>> filter_importance(w, "L2")
    tensor([5., 1., 0.])
    >>> filter_importance(w, "L1")
    tensor([7., 1., 0.])

    :param weight: a floating-point weight with at least one dimension.
    :param metric: one of :data:`FILTER_IMPORTANCES`.
    :param dim: the filter dimension (0 for conv / linear, 1 for transposed convolutions).
    :param normalize: divide the weight by its L2 norm over the whole tensor first (an all-zero
        weight stays zero, where NNCF would divide by zero and get NaN).
    :return: a 1-D tensor of ``weight.shape[dim]`` importances (``weight``'s dtype and device),
        detached from autograd.
    :raises InvalidArgumentError: for an unknown metric, a non-floating-point or 0-d weight, or a
        ``dim`` outside the weight's dimensions.
    """
    if metric not in FILTER_IMPORTANCES:
        raise InvalidArgumentError(f"filter importance must be one of {list(FILTER_IMPORTANCES)}, got {metric!r}")
    if not weight.is_floating_point() or weight.dim() == 0:
        raise InvalidArgumentError(f"weight must be a floating-point tensor with dimensions, got {weight.dtype} "
                                   f"of shape {tuple(weight.shape)}")
    if not -weight.dim() <= dim < weight.dim():
        raise InvalidArgumentError(f"dim {dim} is outside the weight's {weight.dim()} dimensions")
    w = weight.detach()
    if normalize:
        w = w / w.norm(2).clamp_min(torch.finfo(w.dtype).tiny)
    rows = w.movedim(dim, 0).reshape(w.shape[dim], -1)  # (filters, weights per filter)
    if metric == "L2":
        return rows.norm(2, dim=1)
    if metric == "L1":
        return rows.abs().sum(dim=1)
    return torch.cdist(rows[None], rows[None], p=2.0)[0].sum(dim=0)


def pruned_count(channels: int, level: float) -> int:
    """How many of a group's ``channels`` a per-group pruning ``level`` removes.

    NNCF 2.x keeps ``ceil(channels * (1 - level))`` channels rounded *up to a multiple of 8*
    (``get_rounded_pruned_element_number``), which on narrow layers prunes nothing at all (a
    16-channel group keeps 16 up to level 0.5). Here the multiple is 1: ``channels -
    ceil(channels - channels * level)``, the floor of ``channels * level`` up to float rounding.
    At least one channel is always kept (NNCF's threshold also keeps the most important filter
    at level 1).

    >>> pruned_count(16, 0.4), pruned_count(10, 0.3), pruned_count(8, 1.0)
    (6, 3, 7)

    :param channels: channels of the group, ``>= 1``.
    :param level: the pruning level in ``[0, 1]``.
    :return: the number of channels to remove, in ``[0, channels - 1]``.
    :raises InvalidArgumentError: for a level outside ``[0, 1]`` or fewer than one channel.
    """
    _check_level(level)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise InvalidArgumentError(f"channels must be an integer >= 1, got {channels!r}")
    kept = math.ceil(channels - channels * float(level))
    return min(max(channels - kept, 0), channels - 1)


def keep_lowest_pruned(importance: torch.Tensor, count: int) -> torch.Tensor:
    """Keep mask that removes exactly the ``count`` least important entries.

    Ties are broken by position (the lower index is removed first), so exactly ``count`` are
    removed; NNCF's threshold mask (``importance >= threshold``) keeps every entry tied with the
    threshold and may remove fewer.

    >>> keep_lowest_pruned(torch.tensor([0.5, 0.1, 0.9, 0.1]), 2)
    tensor([ True, False,  True, False])

    :param importance: 1-D importances.
    :param count: how many to remove, in ``[0, len(importance)]``.
    :return: a bool tensor of ``importance``'s shape, ``True`` = keep.
    :raises InvalidArgumentError: for a non-1-D importance, a count out of range, or NaN importances.
    """
    if importance.dim() != 1:
        raise InvalidArgumentError(f"importance must be 1-D, got shape {tuple(importance.shape)}")
    if not 0 <= count <= importance.numel():
        raise InvalidArgumentError(f"count must be in [0, {importance.numel()}], got {count}")
    if torch.isnan(importance).any():
        raise InvalidArgumentError("importance holds NaN; the weights it was computed from are not finite")
    keep = torch.ones(importance.shape, dtype=torch.bool, device=importance.device)
    order = torch.argsort(importance, stable=True)
    keep[order[:count]] = False
    return keep


def global_order(importances: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """Every ``(group, channel)`` pair, least important first (ties: earlier group, lower channel).

    :param importances: one 1-D importance tensor per group.
    :return: the pairs in pruning order.
    """
    flat = torch.cat([imp.detach().double().cpu() for imp in importances]) if importances else torch.zeros(0)
    if torch.isnan(flat).any():
        raise InvalidArgumentError("importance holds NaN; the weights it was computed from are not finite")
    owners = [(g, c) for g, imp in enumerate(importances) for c in range(imp.numel())]
    return [owners[int(i)] for i in torch.argsort(flat, stable=True)]


def global_keep_masks(importances: Sequence[torch.Tensor], level: float) -> list[torch.Tensor]:
    """Keep masks that remove the ``level`` share of all filters ranked together (``all_weights``).

    ``int(level * N)`` of the ``N`` filters of all groups are removed, least important first (NNCF
    2.x takes the threshold ``sorted(importances)[int(level * N)]``), except that a group never
    loses its last channel: such a filter is skipped and the next one in the ranking is removed.

    :param importances: one 1-D importance tensor per group (normalised weights, as NNCF).
    :param level: the share of all filters to remove, in ``[0, 1]``.
    :return: one bool keep mask per group.
    :raises InvalidArgumentError: for a level outside ``[0, 1]`` or NaN importances.
    """
    _check_level(level)
    total = sum(imp.numel() for imp in importances)
    target = min(int(level * total), total - len(importances))
    keeps = [torch.ones(imp.shape, dtype=torch.bool, device=imp.device) for imp in importances]
    left = [imp.numel() for imp in importances]
    removed = 0
    for g, c in global_order(importances):
        if removed >= target:
            break
        if left[g] > 1:
            keeps[g][c] = False
            left[g] -= 1
            removed += 1
    return keeps


__all__ = [
    "DEFAULT_FILTER_IMPORTANCE",
    "FILTER_IMPORTANCES",
    "filter_importance",
    "global_keep_masks",
    "global_order",
    "keep_lowest_pruned",
    "pruned_count",
]
