"""What activation checkpointing needs to re-run a module call with the runtime state it had.

In backward, ``torch.utils.checkpoint`` re-runs a checkpointed module outside the model's forward.
The module's hooks notice (:func:`in_backward`) and give the re-run the state of the original call
in the last forward with gradients: the transformed weights, and, when operation points exist, the
op counters as they stood when the call began, so its ops get the same names and inserted modules.

For that, a forward with gradients and operation points keeps a :class:`ForwardLog`: the family of
each counted op (one list append per op) and, per module call, where in that list it began (one
tuple per call). The counters of a re-run are computed lazily, per family the re-run touches, by
a binary search in an index built once per log (:class:`CountersAt`), so a re-run costs
``O(families it touches x log ops)``, not a pass over the forward's ops.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import torch
from torch import nn

from nncompress.errors import GraphMismatchError
from nncompress.torch.op_sequence import Family


def in_backward() -> bool:
    """Whether autograd is running a backward on this thread (where checkpointing re-runs modules)."""
    return bool(torch._C._current_graph_task_id() != -1)


class CountersAt(dict[Family, int]):
    """Op counters as they stood at one point of a logged forward, filled in as families are read.

    ``counters[family]`` for a family not yet seen is the number of its ops logged before
    ``start``, then counting goes on as in a forward (``counters[family] = index + 1``).

    :param positions: family -> positions of its ops in the log (sorted).
    :param start: the log position the re-run starts at.
    """

    def __init__(self, positions: dict[Family, list[int]], start: int) -> None:
        super().__init__()
        self.positions = positions
        self.start = start

    def __missing__(self, family: Family) -> int:
        count = bisect_left(self.positions.get(family, ()), self.start)
        self[family] = count
        return count


class ForwardLog:
    """The counted ops and module calls of one forward with gradients and operation points."""

    __slots__ = ("ops", "calls", "used", "_positions")

    def __init__(self) -> None:
        self.ops: list[Family] = []  # the family of every counted op, in order
        self.calls: dict[nn.Module, list[tuple[int, int]]] = {}  # module -> (id of 1st argument, ops before)
        self.used: set[tuple[nn.Module, int]] = set()  # the calls already re-run
        self._positions: dict[Family, list[int]] | None = None

    def enter_call(self, module: nn.Module, args: Any) -> None:
        """Note a call of ``module`` beginning (from its forward pre-hook; it runs no tensor op)."""
        self.calls.setdefault(module, []).append((id(args[0]) if args else 0, len(self.ops)))

    def counters_for(self, module: nn.Module, args: Any, scope: str) -> CountersAt:
        """The op counters for re-running a call of ``module`` (see :meth:`pick_call`).

        :param module: the module backward re-runs.
        :param args: the arguments of the re-run.
        :param scope: the module's scope, for the error message.
        :return: counters as they stood when the original call began.
        :raises GraphMismatchError: if the logged forward did not call the module.
        """
        start = self.calls[module][self.pick_call(module, args, scope)][1]
        if self._positions is None:  # once per log, at its first re-run
            self._positions = {}
            for i, family in enumerate(self.ops):
                self._positions.setdefault(family, []).append(i)
        return CountersAt(self._positions, start)

    def pick_call(self, module: nn.Module, args: Any, scope: str) -> int:
        """Which call of ``module`` backward re-runs: the one with the same first argument
        (non-reentrant checkpointing passes the same tensor), else the latest one not yet re-run
        (reentrant checkpointing passes a detached copy; backward runs in reverse order).

        :raises GraphMismatchError: if the logged forward did not call the module.
        """
        calls = self.calls.get(module)
        if not calls:
            raise GraphMismatchError(
                f"backward re-runs module {scope} (activation checkpointing), but the last forward with "
                "gradients did not call it; run backward after the forward whose graph it differentiates"
            )
        first = id(args[0]) if args else 0
        free = [i for i in range(len(calls)) if (module, i) not in self.used]
        matching = [i for i in free if calls[i][0] == first]
        call = (matching or free or [len(calls) - 1])[-1]
        self.used.add((module, call))
        return call
