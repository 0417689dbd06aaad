"""The state activation checkpointing's re-run of a module call gets: which call, and the op
counters as they stood when it began (a lazy binary search, checked against a plain count)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from nncompress.errors import GraphMismatchError
from nncompress.torch.recompute import ForwardLog, in_backward

FAMILIES = [("Net", "add"), ("Net/Linear[fc]", "linear"), ("Net", "mul")]


@given(st.lists(st.integers(0, len(FAMILIES) - 1), max_size=40), st.data())
def test_counters_equal_a_count_of_the_ops_logged_before_the_call(ops: list[int], data: st.DataObject) -> None:
    log = ForwardLog()
    module = nn.Identity()
    start = data.draw(st.integers(0, len(ops)))
    for i, f in enumerate(ops):
        if i == start:
            log.enter_call(module, ())
        log.ops.append(FAMILIES[f])
    if start == len(ops):
        log.enter_call(module, ())
    counters = log.counters_for(module, (), "Net/Identity[m]")
    expected = Counter(FAMILIES[f] for f in ops[:start])
    assert {fam: counters[fam] for fam in FAMILIES} == {fam: expected[fam] for fam in FAMILIES}
    counters[FAMILIES[0]] += 1  # counting goes on from there
    assert counters[FAMILIES[0]] == expected[FAMILIES[0]] + 1


def test_calls_are_matched_by_first_argument_then_in_reverse_order() -> None:
    log, module = ForwardLog(), nn.Identity()
    a, b, c = torch.zeros(1), torch.zeros(1), torch.zeros(1)
    for x in (a, b, c):
        log.enter_call(module, (x,))
        log.ops.append(FAMILIES[0])
    assert log.pick_call(module, (b,), "m") == 1  # non-reentrant: the same tensor
    assert log.pick_call(module, (torch.zeros(1),), "m") == 2  # reentrant: a copy, latest call not re-run
    assert log.pick_call(module, (torch.zeros(1),), "m") == 0
    with pytest.raises(GraphMismatchError, match="did not call it"):
        log.pick_call(nn.ReLU(), (a,), "Net/ReLU[r]")


def test_in_backward_only_during_backward() -> None:
    seen: list[bool] = []
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: seen.append(in_backward()))
    y.sum().backward()
    assert seen == [True] and not in_backward()
