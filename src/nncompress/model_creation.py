"""``create_compressed_model``: the entry point of training-time compression."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import nn

from nncompress.algorithms.context import CompressionContext
from nncompress.algorithms.distillation.teacher import distilling, remove_teacher_hooks
from nncompress.algorithms.quantization.hawq import InitDataWithLoss
from nncompress.algorithms.registry import BUILDERS
from nncompress.algorithms.state_fields import check_format_version, state_mapping
from nncompress.api.compression import CompressionAlgorithmController
from nncompress.composite import CompositeCompressionAlgorithmBuilder
from nncompress.config import AlgorithmSection, CompressionConfig
from nncompress.errors import (
    CompressionStateError,
    ConfigError,
    InputInfoError,
    InvalidArgumentError,
    NNCompressError,
)
from nncompress.handles import register_controller
from nncompress.torch.calibration import refuse_inference_mode
from nncompress.torch.inputs import inputs_from_infos, split_batch
from nncompress.torch.insertion import remove_runtime
from nncompress.torch.runtime import get_runtime

_INIT_DATA_ATTR = "_nncompress_init_data"


def register_default_init_args(
    config: CompressionConfig, init_data: Iterable[Any], criterion: Any = None, criterion_fn: Any = None,
    *args: Any, **kwargs: Any,
) -> CompressionConfig:
    """Attach initialisation data to a config, as NNCF 2.x's function of this name did.

    ``create_compressed_model`` uses it when no ``init_data`` is passed. ``criterion`` and
    ``criterion_fn`` (``(outputs, target, criterion) -> loss``) travel with the data: HAWQ
    precision initialisation uses them (default: cross-entropy on ``(inputs, target)`` batches).
    Other NNCF arguments (``device``, ``validate_fn``...) are accepted and ignored.

    :param config: the config.
    :param init_data: batches for initialisers (``(inputs, target)`` pairs, tensors or dicts).
    :param criterion: the training loss module, e.g. ``nn.CrossEntropyLoss()``.
    :param criterion_fn: how to call it, ``criterion(outputs, target)`` by default.
    :return: the same config.
    """
    if criterion is not None or criterion_fn is not None:
        init_data = InitDataWithLoss(init_data, criterion, criterion_fn)
    setattr(config, _INIT_DATA_ATTR, init_data)
    return config


def create_compressed_model(
    model: nn.Module,
    config: CompressionConfig | Mapping[str, Any],
    compression_state: dict[str, Any] | None = None,
    init_data: Iterable[Any] | None = None,
    example_input: Any = None,
) -> tuple[CompressionAlgorithmController[nn.Module], nn.Module]:
    """Insert the compression operations of ``config`` into ``model``.

    The model stays the same object, of the same class, with the same ``state_dict`` keys plus
    the inserted modules' keys under ``nncompress.``. It runs once on an example input to
    capture its operations. If anything fails, the model is left as it was.

    Example::

        config = CompressionConfig.from_json("sparsity.json")
        ctrl, model = create_compressed_model(model, config, init_data=train_loader)

    :param model: the model to compress (changed in place and returned).
    :param config: a :class:`CompressionConfig` or a plain dict in NNCF 2.x format.
    :param compression_state: ``ctrl.get_compression_state()`` of a checkpoint to resume from;
        load the checkpoint's ``state_dict`` into the model afterwards.
    :param init_data: batches for initialisers (``(inputs, target)`` pairs, tensors, dicts).
    :param example_input: one batch for capture and export, instead of ``input_info``.
    :return: ``(controller, model)``.
    :raises InvalidArgumentError: for a bad argument, or a call under ``torch.inference_mode()``.
    """
    refuse_inference_mode("create_compressed_model()")
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if get_runtime(model) is not None or distilling(model):
        raise InvalidArgumentError("the model is already compressed; strip it first or pass the original model")
    if not isinstance(config, CompressionConfig):
        config = CompressionConfig.from_dict(dict(config))
    registered = getattr(config, _INIT_DATA_ATTR, None)
    if init_data is None:
        init_data = registered
    elif isinstance(registered, InitDataWithLoss) and not isinstance(init_data, InitDataWithLoss):
        # the loss registered with the config goes with the data given here
        init_data = InitDataWithLoss(init_data, registered.criterion, registered.criterion_fn)
    context = CompressionContext(*_example_inputs(config, example_input), init_data=init_data)
    sections = [_with_default_lr_multiplier(s, config) for s in config.algorithm_sections()]
    _check_unique_algorithms(sections)
    builders = [BUILDERS[s.algorithm](s, context) for s in sections]
    composite = CompositeCompressionAlgorithmBuilder(builders, context)
    if compression_state is not None:
        _check_state_shape(compression_state)
        with _state_errors():
            composite.load_state(compression_state["builder_state"])
    try:
        composite.apply_to(model)
        ctrl = composite.build_controller(model)
        if compression_state is None:
            composite.initialize(model)
        else:
            with _state_errors():
                ctrl.load_state(compression_state["ctrl_state"])
    except BaseException:
        remove_runtime(model)
        remove_teacher_hooks(model)
        raise
    register_controller(model, ctrl)
    return ctrl, model


def _example_inputs(config: CompressionConfig, example_input: Any) -> tuple[Any, str]:
    if example_input is not None:
        return split_batch(example_input), "example_input"
    infos = config.input_infos
    if not infos:
        raise InputInfoError(
            "no example input: give input_info in the config (e.g. {\"sample_size\": [1, 3, 32, 32]}) "
            "or pass example_input to create_compressed_model"
        )
    return inputs_from_infos(infos), "input_info"


_TRAINABLE = frozenset({"quantization", "rb_sparsity"})
"""Algorithms with trainable parameters of their own, which ``compression_lr_multiplier`` scales."""


def _with_default_lr_multiplier(section: AlgorithmSection, config: CompressionConfig) -> AlgorithmSection:
    """The section with the config's top-level ``compression_lr_multiplier`` where it has none
    of its own (NNCF 2.x: the top-level value is the default of every algorithm)."""
    default = config.get("compression_lr_multiplier")
    if default is None or "compression_lr_multiplier" in section.section or section.algorithm not in _TRAINABLE:
        return section
    return dataclasses.replace(section, section={**section.section, "compression_lr_multiplier": default})


def _check_unique_algorithms(sections: list[AlgorithmSection]) -> None:
    seen: dict[str, str] = {}
    for s in sections:
        if s.algorithm in seen:
            raise ConfigError(
                f"{s.json_path}.algorithm",
                f"{s.algorithm!r} already appears at {seen[s.algorithm]}; give each algorithm one section "
                "(select layers with target_scopes / ignored_scopes)",
                s.algorithm,
            )
        seen[s.algorithm] = s.json_path


def _check_state_shape(state: Any) -> None:
    if not isinstance(state, Mapping) or not {"builder_state", "ctrl_state"} <= set(state):
        keys = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise CompressionStateError(
            f"compression_state must be the dict returned by ctrl.get_compression_state() with keys "
            f"'builder_state' and 'ctrl_state'; got {keys}"
        )
    check_format_version(state)
    extra = sorted(map(str, set(state) - {"format_version", "builder_state", "ctrl_state"}))
    if extra:
        raise CompressionStateError(
            f"compression_state has unknown keys {extra}; allowed: 'format_version', 'builder_state', 'ctrl_state'"
        )
    state_mapping(state["builder_state"], "compression_state.builder_state")
    state_mapping(state["ctrl_state"], "compression_state.ctrl_state")


@contextmanager
def _state_errors() -> Iterator[None]:
    """Report a state that passed the field checks but still broke loading as a CompressionStateError.

    Every field is checked where it is read; this is the net under checks an algorithm may lack,
    so that a hand-edited state never surfaces as a bare KeyError or TypeError.
    """
    try:
        yield
    except NNCompressError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as err:
        raise CompressionStateError(
            f"the compression_state could not be loaded ({type(err).__name__}: {err}); it was edited or written "
            "by another version. Resume with the state get_compression_state() returned."
        ) from err
