"""A hand-edited or other-version compression_state: a CompressionStateError, never another error,
and the model left as it was (issue 8).

The fuzz test takes real states and mutates every key and value (delete it, wrong types, NaN,
a float where an integer is stored, infinity, a negative number, an extra key) and resumes from
each. Each try must either work or raise CompressionStateError with the model untouched, from a
field check whose message names the path in the state, not from the safety net in
``model_creation`` that turns any KeyError/TypeError/ValueError of loading into one.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import nncompress as nnc
from nncompress.algorithms.state_fields import STATE_FORMAT_VERSION
from nncompress.errors import CompressionStateError, NNCompressError
from nncompress.torch.runtime import get_runtime
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN

Path = tuple[Any, ...]
_DELETE = object()
_BAD_VALUES: list[Any] = ["x", None, [], {}, True, float("nan"), 1.5, float("inf"), -7, 10**30]
_STATE_PATH = re.compile(r"\b(ctrl_state|builder_state|compression_state)\b")

CONFIGS = {
    "poly_per_step": sparsity_config({"sparsity_init": 0.1, "sparsity_target": 0.6, "sparsity_target_epoch": 2,
                                      "update_per_optimizer_step": True}),
    "adaptive": sparsity_config({"schedule": "adaptive", "sparsity_target": 0.6}),
    "magnitude+const": nnc.CompressionConfig.from_dict({
        "input_info": {"sample_size": [2, 1, 8, 8]},
        "compression": [
            {"algorithm": "magnitude_sparsity", "target_scopes": ["{re}.*blocks.*"],
             "params": {"schedule": "multistep", "multistep_steps": [1], "multistep_sparsity_levels": [0.2, 0.5]}},
            {"algorithm": "const_sparsity", "ignored_scopes": ["{re}.*blocks.*"]},
        ],
    }),
    "quantization+magnitude": nnc.CompressionConfig.from_dict({
        "input_info": {"sample_size": [2, 1, 8, 8]},
        "compression": [
            {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}},
             "params": {"activations_quant_start_epoch": 1, "weights_quant_start_epoch": 1}},
            {"algorithm": "magnitude_sparsity"},
        ],
    }),
}


def _trained_state(config: nnc.CompressionConfig) -> dict[str, Any]:
    torch.manual_seed(0)
    ctrl, _ = nnc.create_compressed_model(ResidualCNN(), config)
    for _ in range(2):
        ctrl.scheduler.epoch_step()
        for _ in range(3):
            ctrl.scheduler.step()
    ctrl.scheduler.step()
    return json.loads(json.dumps(ctrl.get_compression_state(), allow_nan=False))


def _paths(node: Any, path: Path = ()) -> Iterator[Path]:
    """Every key of every dict and every index of every list, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*path, k)
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*path, i)
            yield from _paths(v, (*path, i))


def _dicts(node: Any, path: Path = ()) -> Iterator[Path]:
    if isinstance(node, dict):
        yield path
        for k, v in node.items():
            yield from _dicts(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _dicts(v, (*path, i))


def _mutated(state: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(state)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if value is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def _mutations(state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _paths(state):
        yield f"delete {path}", _mutated(state, path, _DELETE)
        for bad in _BAD_VALUES:
            yield f"{path} = {bad!r}", _mutated(state, path, bad)
    for path in _dicts(state):
        yield f"extra key at {path}", _mutated(state, (*path, "unexpected_key"), 0)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_mutated_state_is_loaded_or_refused_cleanly(name: str) -> None:
    config = CONFIGS[name]
    state = _trained_state(config)
    model = ResidualCNN()
    before = _snapshot(model)
    hooks_before = (len(model._forward_hooks), len(model._forward_pre_hooks))
    refused = 0
    tried = 0
    through_net: list[str] = []  # refusals the field checks missed
    unnamed: list[str] = []  # refusals whose message names no path in the state
    for label, bad_state in _mutations(state):
        tried += 1
        try:
            ctrl, compressed = nnc.create_compressed_model(model, config, compression_state=bad_state)
        except CompressionStateError as err:
            refused += 1
            # the net raises ``from`` the KeyError/TypeError/...; field checks have no such cause
            if isinstance(err.__cause__, Exception) and not isinstance(err.__cause__, NNCompressError):
                through_net.append(f"{label}: {err}")
            elif not _STATE_PATH.search(str(err)):
                unnamed.append(f"{label}: {err}")
            assert get_runtime(model) is None, label
            after = model.state_dict()
            assert list(after) == list(before), label
            assert all(torch.equal(after[k], v) for k, v in before.items()), label
            assert (len(model._forward_hooks), len(model._forward_pre_hooks)) == hooks_before, label
            continue
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{label}: {type(err).__name__}: {err}")
        # accepted: the resumed controller is usable and its state is strict JSON again
        json.dumps(ctrl.get_compression_state(), allow_nan=False)
        ctrl.scheduler.epoch_step()
        ctrl.scheduler.step()
        compressed(torch.randn(2, 1, 8, 8))
        ctrl.strip()  # back to the plain model for the next try
        model = ResidualCNN()
        before = _snapshot(model)
    assert tried > 100 and refused > tried // 2
    assert not through_net, f"{len(through_net)} of {refused} refusals came through the safety net: {through_net}"
    assert not unnamed, f"{len(unnamed)} of {refused} refusals name no path in the state: {unnamed}"


def test_nan_levels_and_float_epochs_are_refused_naming_the_field() -> None:
    config = CONFIGS["poly_per_step"]
    state = _trained_state(config)
    cases = [
        (("ctrl_state", "magnitude_sparsity", "current_level"), float("nan"), "current_level"),
        (("ctrl_state", "magnitude_sparsity", "scheduler_state", "current_level"), float("nan"),
         "scheduler_state.current_level"),
        (("ctrl_state", "magnitude_sparsity", "scheduler_state", "current_epoch"), 2.0,
         "scheduler_state.current_epoch"),
        (("ctrl_state", "magnitude_sparsity", "scheduler_state", "steps_per_epoch"), 3.5,
         "scheduler_state.steps_per_epoch"),
        (("ctrl_state", "magnitude_sparsity", "thresholds", 0), float("nan"), "thresholds[0]"),
    ]
    for path, value, field in cases:
        with pytest.raises(CompressionStateError, match=re.escape(field)) as info:
            nnc.create_compressed_model(ResidualCNN(), config, compression_state=_mutated(state, path, value))
        assert repr(value) in str(info.value)


def test_format_version_is_written_and_checked() -> None:
    config = CONFIGS["poly_per_step"]
    state = _trained_state(config)
    assert state["format_version"] == STATE_FORMAT_VERSION == 1
    for other in (2, 0, "1", 1.0, None):
        with pytest.raises(CompressionStateError, match="format_version") as info:
            nnc.create_compressed_model(ResidualCNN(), config, compression_state={**state, "format_version": other})
        assert repr(other) in str(info.value) and "version 1" in str(info.value)
    # a state written before versioning (no key) has version 1's layout and still loads
    legacy = {k: v for k, v in state.items() if k != "format_version"}
    ctrl, _ = nnc.create_compressed_model(ResidualCNN(), config, compression_state=legacy)
    assert ctrl.scheduler.get_state() == state["ctrl_state"]["magnitude_sparsity"]["scheduler_state"]


def test_nncf_style_state_is_refused() -> None:
    # the shape of an NNCF 2.x state: same top-level keys, NNCF's own field names
    config = CONFIGS["poly_per_step"]
    state = _trained_state(config)
    nncf_like = copy.deepcopy(state)
    nncf_like["ctrl_state"]["magnitude_sparsity"]["scheduler_state"] = {
        "current_step": 6, "current_epoch": 1, "_steps_per_epoch": 3}
    with pytest.raises(CompressionStateError, match="missing key 'current_level'"):
        nnc.create_compressed_model(ResidualCNN(), config, compression_state=nncf_like)


def test_state_shape_errors() -> None:
    config = CONFIGS["poly_per_step"]
    state = _trained_state(config)
    for bad in ([], "state", {**state, "builder_state": []}, {**state, "ctrl_state": 3}):
        with pytest.raises(CompressionStateError):
            nnc.create_compressed_model(ResidualCNN(), config, compression_state=bad)  # type: ignore[arg-type]
    assert math.isfinite(state["ctrl_state"]["magnitude_sparsity"]["current_level"])


def test_state_fields_docstring_examples() -> None:
    import doctest

    from nncompress.algorithms import state_fields

    assert doctest.testmod(state_fields, raise_on_error=False).failed == 0


def _position(ctrl: Any) -> dict[str, Any]:
    """Everything a controller load may change: each child's counters and state, quantizers' flags."""
    quantization, sparsity = ctrl.child_ctrls
    return {
        "state": json.dumps(ctrl.get_state()),
        "enabled": [q.enabled for q in quantization.quantizers],
        "masks": [r.mask.mask.clone() for r in sparsity.sparsified_weights],
    }


@pytest.mark.filterwarnings("ignore:.*quantizers switched on without init_data")
@pytest.mark.parametrize("path, value", [
    (("magnitude_sparsity", "scheduler_state", "current_level"), float("nan")),
    (("magnitude_sparsity", "scheduler_state", "current_epoch"), 1.5),
    (("magnitude_sparsity", "scheduler_state", "skipping_epoch"), "no"),
    (("magnitude_sparsity", "loss_state"), []),
    (("magnitude_sparsity", "thresholds"), [0.1]),
    (("magnitude_sparsity", "frozen"), 0),
    (("quantization", "scheduler_state", "current_step"), -2),
])
def test_a_refused_composite_state_changes_no_child(path: Path, value: Any) -> None:
    """``ctrl.load_state`` itself (no net around it): the first child's valid entry is not loaded
    when the second child's entry is refused, and a refused scheduler field leaves the counters."""
    config = CONFIGS["quantization+magnitude"]
    saved = _trained_state(config)["ctrl_state"]  # epoch 1: quantizers on (start epoch 1)
    torch.manual_seed(0)
    ctrl, _ = nnc.create_compressed_model(ResidualCNN(), config)  # epoch -1: quantizers off
    before = _position(ctrl)
    assert not any(before["enabled"])
    with pytest.raises(CompressionStateError, match=r"^ctrl_state\." + re.escape(".".join(map(str, path[:2])))):
        ctrl.load_state(_mutated(saved, path, value))
    after = _position(ctrl)
    assert after["state"] == before["state"] and after["enabled"] == before["enabled"]
    assert all(torch.equal(a, b) for a, b in zip(after["masks"], before["masks"]))
    ctrl.load_state(saved)  # the good state still loads and switches the quantizers on
    assert all(_position(ctrl)["enabled"])
