"""How many channels of each group a level removes, for a share of filters or of FLOPs.

Counts are ``{group index: pruned channels}``; ``removed(counts)`` is the share of the model's
FLOPs they remove (a callable over the captured layer costs). Every function keeps at least one
channel per group.

``pruning_flops_target`` without ``all_weights`` (NNCF 2.x: the smallest uniform per-group level
whose FLOPs are at or below the target, found by bisection): :func:`uniform_counts_for_flops`
bisects the uniform level the same way, then, because at one level several groups lose a channel
at once, adds those channels one at a time and keeps the count vector whose removed FLOPs are
closest to the target. With ``all_weights`` (NNCF: filters removed one by one in global
importance order, at most 90% of a group, until the FLOPs are below the target)
:func:`global_counts_for_flops` does the same, again keeping the closest of the last two states.
NNCF stops at the first state at or past the target and rounds kept filters up to a multiple of
8 per group; on narrow networks that overshoots or undershoots by many percent (a 40% target
removed 24.6% of a small ResNet's FLOPs with NNCF 2.19).

Kept channels are rounded up to a multiple of ``multiple`` (``channel_multiple``, default 16:
onnxruntime's CPU convolutions work in blocks of 16 channels) *inside* the searches, so the
closest reachable state is still chosen: the step from one state to the next removes one
multiple from one group (the first step of a group whose width is not a multiple goes down to
the largest multiple below it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from nncompress.errors import InvalidArgumentError
from nncompress.functional.importance import pruned_count

Counts = dict[int, int]
Removed = Callable[[Mapping[int, int]], float]

NNCF_PRUNING_QUOTA = 0.9
"""Most of a group's channels NNCF 2.x removes when ranking all filters for a FLOPs target."""


def quota(channels: int) -> int:
    """Most channels of a group the global FLOPs ranking removes: 90% rounded down (NNCF), at most all but one."""
    return min(math.floor(channels * NNCF_PRUNING_QUOTA), channels - 1)


def rounded_pruned(channels: int, pruned: int, multiple: int) -> int:
    """``pruned`` lowered so that the channels kept are a multiple of ``multiple`` (or all of them).

    >>> rounded_pruned(64, 20, 16), rounded_pruned(24, 10, 16), rounded_pruned(16, 8, 16), rounded_pruned(10, 3, 1)
    (16, 8, 0, 3)
    """
    kept = min(channels, math.ceil((channels - pruned) / multiple) * multiple)
    return channels - kept


def next_pruned(channels: int, pruned: int, multiple: int) -> int | None:
    """The next larger allowed pruned count of a group (one multiple fewer kept), ``None`` at the floor."""
    kept = channels - pruned
    fewer = (kept - 1) // multiple * multiple if multiple > 1 else kept - 1
    return channels - fewer if fewer >= 1 else None


def previous_pruned(channels: int, pruned: int, multiple: int) -> int | None:
    """The next smaller allowed pruned count of a group (one multiple more kept), ``None`` at 0."""
    if pruned == 0:
        return None
    kept = channels - pruned
    more = min(channels, (kept // multiple + 1) * multiple) if multiple > 1 else kept + 1
    return channels - more


def min_kept(channels: int, multiple: int) -> int:
    """The fewest channels a group can keep: one multiple (all of them if it is not wider than that)."""
    return channels if channels <= multiple else multiple


def uniform_counts(channels: Mapping[int, int], level: float, multiple: int = 1) -> Counts:
    """The same level in every group: :func:`~nncompress.functional.importance.pruned_count` each,
    kept channels rounded up to a multiple of ``multiple``."""
    return {g: rounded_pruned(c, pruned_count(c, level), multiple) for g, c in channels.items()}


def _closest(before: Counts, after: Counts, removed: Removed, target: float) -> Counts:
    """``after`` (removes >= target) unless ``before`` is strictly closer to the target."""
    return before if target - removed(before) < removed(after) - target else after


def _unreachable(target: float, most: float) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"a FLOPs pruning level of {target!r} cannot be reached: keeping one channel per pruned group removes "
        f"{most:.4f} of the FLOPs at most (maximal_compression_rate)"
    )


def uniform_counts_for_flops(channels: Mapping[int, int], removed: Removed, target: float,
                             multiple: int = 1) -> Counts:
    """Counts of a near-uniform level whose removed FLOPs share is closest to ``target``.

    :param channels: channels per pruned group.
    :param removed: share of the FLOPs removed by counts.
    :param target: the share of FLOPs to remove, in ``[0, 1]``.
    :param multiple: kept channels are a multiple of this (or the whole group).
    :return: the counts.
    :raises InvalidArgumentError: if the target is beyond what the groups can remove.
    """
    if target <= 0:
        return {g: 0 for g in channels}
    top = uniform_counts(channels, 1.0, multiple)
    if removed(top) < target - 1e-12:
        raise _unreachable(target, removed(top))
    lo, hi = 0.0, 1.0  # removed(lo) < target <= removed(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if removed(uniform_counts(channels, mid, multiple)) >= target:
            hi = mid
        else:
            lo = mid
    before, after = uniform_counts(channels, lo, multiple), uniform_counts(channels, hi, multiple)
    # channels that go between the two levels, one step (one multiple) at a time, smallest FLOPs step first
    near = _steps_to_target(channels, before, removed, target, multiple, limit=after)
    if multiple == 1 or abs(removed(near) - target) <= FLOPS_TOLERANCE:
        return near  # single channels: within one channel's FLOPs of the target
    # coarse steps (wide multiples, few groups): uniform levels jump past the target; let the groups
    # differ, taking the smallest FLOPs step of any group each time, then trading steps between groups
    free = _refine(channels, _steps_to_target(channels, before, removed, target, multiple, limit=None),
                   removed, target, multiple)
    return near if abs(removed(near) - target) <= abs(removed(free) - target) else free


def _refine(channels: Mapping[int, int], state: Counts, removed: Removed, target: float, multiple: int,
            rounds: int = 50) -> Counts:
    """Hill-climb on the distance to ``target``: move one group a step, or one group up and another
    down, while that brings the removed FLOPs share closer."""
    def moves(g: int) -> list[int]:
        return [p for p in (next_pruned(channels[g], state[g], multiple),
                            previous_pruned(channels[g], state[g], multiple)) if p is not None]

    for _ in range(rounds):
        best, gap = state, abs(removed(state) - target)
        singles = [{**state, g: p} for g in channels for p in moves(g)]
        pairs = [{**one, h: p} for one in singles for h in channels if one[h] == state[h] for p in moves(h)]
        for candidate in singles + pairs:
            if (d := abs(removed(candidate) - target)) < gap - 1e-12:
                best, gap = candidate, d
        if best is state:
            return state
        state = best
    return state


FLOPS_TOLERANCE = 0.01
"""How far from a FLOPs target the near-uniform search may land before groups are allowed to differ."""


def _steps_to_target(channels: Mapping[int, int], start: Counts, removed: Removed, target: float, multiple: int,
                     limit: Mapping[int, int] | None) -> Counts:
    """From ``start``, take one group's next step at a time (smallest FLOPs step first; groups only up
    to ``limit`` if given) until the target is crossed; the closer of the last two states."""
    state = dict(start)
    while True:
        steps = {g: {**state, g: nxt} for g in channels
                 if (nxt := next_pruned(channels[g], state[g], multiple)) is not None
                 and (limit is None or nxt <= limit[g])}
        if not steps:
            return _closest(start, state, removed, target) if removed(state) < target else state
        g = min(steps, key=lambda g: (removed(steps[g]), g))
        if removed(steps[g]) >= target:
            return _closest(state, steps[g], removed, target)
        state = steps[g]


def global_counts_for_flops(channels: Mapping[int, int], order: Sequence[tuple[int, int]], removed: Removed,
                            target: float, multiple: int = 1) -> tuple[Counts, list[tuple[int, int]]]:
    """Remove filters in global importance ``order`` until the removed FLOPs share is closest to ``target``.

    A group's filters count as removed once a whole ``multiple`` of them is reached in the order
    (kept channels rounded up to a multiple), so the state changes by whole multiples.

    :param channels: channels per pruned group.
    :param order: ``(group, channel)`` pairs, least important first.
    :param removed: share of the FLOPs removed by counts.
    :param target: the share of FLOPs to remove.
    :param multiple: kept channels are a multiple of this (or the whole group).
    :return: the counts and the removed ``(group, channel)`` pairs.
    :raises InvalidArgumentError: if the target is beyond what the quota allows.
    """
    quota_of = {g: quota(c) for g, c in channels.items()}
    sequence: list[tuple[int, int]] = []
    taken = dict.fromkeys(channels, 0)
    for g, c in order:
        if taken[g] < quota_of[g]:
            taken[g] += 1
            sequence.append((g, c))

    def counts(prefix: int) -> Counts:
        out = dict.fromkeys(channels, 0)
        for g, _ in sequence[:prefix]:
            out[g] += 1
        return {g: rounded_pruned(channels[g], n, multiple) for g, n in out.items()}

    if target <= 0:
        return counts(0), []
    if removed(counts(len(sequence))) < target - 1e-12:
        raise _unreachable(target, removed(counts(len(sequence))))
    lo, hi = 0, len(sequence)  # removed(counts(lo)) < target <= removed(counts(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if removed(counts(mid)) >= target:
            hi = mid
        else:
            lo = mid
    best = _closest(counts(lo), counts(hi), removed, target)
    left = dict(best)  # each group's first best[g] filters in the order go
    gone = []
    for g, c in sequence:
        if left[g] > 0:
            left[g] -= 1
            gone.append((g, c))
    return best, gone


def round_keeps(keeps: Sequence[torch.Tensor], importances: Sequence[torch.Tensor], multiple: int) -> list[torch.Tensor]:
    """Keep masks with the kept channels of each group rounded up to a multiple: the most important
    removed channels come back first.

    :param keeps: one bool keep mask per group.
    :param importances: the groups' 1-D importances.
    :param multiple: kept channels are a multiple of this (or the whole group).
    :return: new masks.
    """
    out = []
    for keep, imp in zip(keeps, importances):
        pruned = int((~keep).sum())
        back = pruned - rounded_pruned(keep.numel(), pruned, multiple)
        keep = keep.clone()
        removed_idx = torch.nonzero(~keep).flatten()
        if back > 0 and removed_idx.numel():
            order = torch.argsort(imp[removed_idx].double(), descending=True, stable=True)
            keep[removed_idx[order[:back]]] = True
        out.append(keep)
    return out
