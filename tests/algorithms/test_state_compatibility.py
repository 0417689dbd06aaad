"""States written by older nncompress versions still load (issue 8).

The fixtures under ``fixtures/`` were written by the code of commit efa0601, before
``format_version`` and the polynomial schedule's ``skipping_epoch`` were added (see the
``written_by`` key of each file); each holds the config, and the model is ``ResidualCNN``.
A state without ``format_version`` is read as version 1: fields added to version 1 since take
the value that gives the old code's behaviour.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import nncompress as nnc
from nncompress.errors import CompressionStateError
from nncompress.functional.schedules import polynomial_level
from tests.model_zoo import ResidualCNN

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def test_the_fixtures_are_there() -> None:
    assert NAMES == ["const_sparsity", "magnitude_adaptive", "magnitude_polynomial_per_epoch",
                     "magnitude_polynomial_per_step", "magnitude_polynomial_per_step_measuring", "quantization"]


@pytest.mark.parametrize("name", NAMES)
def test_a_state_written_by_efa0601_loads(name: str) -> None:
    data = _fixture(name)
    state = data["compression_state"]
    assert "format_version" not in state  # written before versioning
    config = nnc.CompressionConfig.from_dict(data["config"])
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), config, compression_state=state)
    saved_ctrl = next(iter(state["ctrl_state"].values()))
    now = next(iter(ctrl.get_state().values()))
    for key, value in saved_ctrl["scheduler_state"].items():  # every saved field is restored as saved
        assert now["scheduler_state"][key] == value, key
    for key in set(saved_ctrl) - {"scheduler_state"}:
        assert now[key] == saved_ctrl[key], key
    # and training goes on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl.scheduler.epoch_step()
        ctrl.scheduler.step()
    model(torch.randn(2, 1, 8, 8))
    json.dumps(ctrl.get_compression_state(), allow_nan=False)


@pytest.mark.parametrize("name", ["magnitude_polynomial_per_step", "magnitude_polynomial_per_epoch"])
def test_old_polynomial_states_do_not_skip_an_epoch(name: str) -> None:
    data = _fixture(name)
    ctrl, _ = nnc.create_compressed_model(
        ResidualCNN(), nnc.CompressionConfig.from_dict(data["config"]), compression_state=data["compression_state"])
    scheduler: Any = ctrl.scheduler
    assert scheduler.skipping_epoch is False
    epoch = scheduler.current_epoch
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*without params.steps_per_epoch")  # a skipped epoch warns
        warnings.filterwarnings("ignore", message=".*optimizer steps, but steps_per_epoch")  # the fixture's 4th step
        scheduler.epoch_step()
    assert scheduler.current_epoch == epoch + 1


def test_old_state_in_the_measuring_epoch_goes_on_as_the_old_code() -> None:
    # efa0601 counted the first epoch (epoch 0) while it measured steps_per_epoch from the step() calls
    data = _fixture("magnitude_polynomial_per_step_measuring")
    saved = data["compression_state"]["ctrl_state"]["magnitude_sparsity"]["scheduler_state"]
    assert saved["current_epoch"] == 0 and saved["steps_per_epoch"] is None and saved["steps_in_epoch"] == 2
    ctrl, _ = nnc.create_compressed_model(
        ResidualCNN(), nnc.CompressionConfig.from_dict(data["config"]), compression_state=data["compression_state"])
    scheduler: Any = ctrl.scheduler
    scheduler.step()  # the epoch's third step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler.epoch_step()
    assert (scheduler.current_epoch, scheduler.steps_per_epoch) == (1, 3)
    scheduler.step()
    params = data["config"]["compression"]["params"]
    expected = polynomial_level(1.0, data["config"]["compression"]["sparsity_init"], params["sparsity_target"],
                                params["sparsity_target_epoch"], scheduler.power, scheduler.concave)
    assert scheduler.current_level == pytest.approx(expected)


def test_skipping_epoch_when_present_is_still_checked() -> None:
    data = _fixture("magnitude_polynomial_per_step")
    state = json.loads(json.dumps(data["compression_state"]))
    state["ctrl_state"]["magnitude_sparsity"]["scheduler_state"]["skipping_epoch"] = 1
    with pytest.raises(CompressionStateError, match=r"ctrl_state\.magnitude_sparsity\.scheduler_state\.skipping_epoch: expected true or false"):
        nnc.create_compressed_model(ResidualCNN(), nnc.CompressionConfig.from_dict(data["config"]),
                                    compression_state=state)
