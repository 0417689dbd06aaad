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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from nncompress.errors import InvalidArgumentError
from nncompress.functional.importance import pruned_count

Counts = dict[int, int]
Removed = Callable[[Mapping[int, int]], float]

NNCF_PRUNING_QUOTA = 0.9
"""Most of a group's channels NNCF 2.x removes when ranking all filters for a FLOPs target."""


def quota(channels: int) -> int:
    """Most channels of a group the global FLOPs ranking removes: 90% rounded down (NNCF), at most all but one."""
    return min(math.floor(channels * NNCF_PRUNING_QUOTA), channels - 1)


def uniform_counts(channels: Mapping[int, int], level: float) -> Counts:
    """The same level in every group: :func:`~nncompress.functional.importance.pruned_count` each."""
    return {g: pruned_count(c, level) for g, c in channels.items()}


def _closest(before: Counts, after: Counts, removed: Removed, target: float) -> Counts:
    """``after`` (removes >= target) unless ``before`` is strictly closer to the target."""
    return before if target - removed(before) < removed(after) - target else after


def _unreachable(target: float, most: float) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"a FLOPs pruning level of {target!r} cannot be reached: keeping one channel per pruned group removes "
        f"{most:.4f} of the FLOPs at most (maximal_compression_rate)"
    )


def uniform_counts_for_flops(channels: Mapping[int, int], removed: Removed, target: float) -> Counts:
    """Counts of a near-uniform level whose removed FLOPs share is closest to ``target``.

    :param channels: channels per pruned group.
    :param removed: share of the FLOPs removed by counts.
    :param target: the share of FLOPs to remove, in ``[0, 1]``.
    :return: the counts.
    :raises InvalidArgumentError: if the target is beyond what the groups can remove.
    """
    if target <= 0:
        return {g: 0 for g in channels}
    top = uniform_counts(channels, 1.0)
    if removed(top) < target - 1e-12:
        raise _unreachable(target, removed(top))
    lo, hi = 0.0, 1.0  # removed(lo) < target <= removed(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if removed(uniform_counts(channels, mid)) >= target:
            hi = mid
        else:
            lo = mid
    before, after = uniform_counts(channels, lo), uniform_counts(channels, hi)
    # channels that go between the two levels, one at a time (smallest FLOPs step first)
    state = dict(before)
    while True:
        steps = [g for g in channels if state[g] < after[g]]
        if not steps:
            return _closest(before, state, removed, target)
        g = min(steps, key=lambda g: (removed({**state, g: state[g] + 1}), g))
        nxt = {**state, g: state[g] + 1}
        if removed(nxt) >= target:
            return _closest(state, nxt, removed, target)
        state = nxt


def global_counts_for_flops(channels: Mapping[int, int], order: Sequence[tuple[int, int]], removed: Removed,
                            target: float) -> tuple[Counts, list[tuple[int, int]]]:
    """Remove filters in global importance ``order`` until the removed FLOPs share is closest to ``target``.

    :param channels: channels per pruned group.
    :param order: ``(group, channel)`` pairs, least important first.
    :param removed: share of the FLOPs removed by counts.
    :param target: the share of FLOPs to remove.
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
        return out

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
    prefix = lo if best == counts(lo) and best != counts(hi) else hi
    return best, sequence[:prefix]
