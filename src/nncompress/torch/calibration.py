"""Running calibration batches (``init_data``) through a model, for initialisers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from nncompress.errors import InitDataError, InvalidArgumentError, NNCompressError
from nncompress.torch.inputs import dtype_mismatch, split_batch


def refuse_inference_mode(entry: str) -> None:
    """Refuse to compress a model while ``torch.inference_mode()`` is on.

    Tensors made under inference mode can never take part in autograd, so the inserted
    quantizer steps and masks would be frozen for good and later training, export tracing or
    resuming would fail far from the cause.

    :param entry: the function called, e.g. ``"quantize()"``.
    :raises InvalidArgumentError: when inference mode is on; nothing has been changed.
    """
    if torch.is_inference_mode_enabled():
        raise InvalidArgumentError(
            f"{entry} was called under torch.inference_mode(): the parameters it inserts would be "
            "inference tensors that can never be trained, exported by tracing or resumed. Call it outside "
            "the `with torch.inference_mode():` block (torch.no_grad() is fine); the model was not changed"
        )


def batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Samples in a batch: the first dimension of its first tensor (1 without tensors)."""
    first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    return int(first.shape[0]) if first is not None else 1


def call_model(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> Any:
    """``model(*args, **kwargs)``; a failure other than our own errors becomes an :class:`InitDataError`.

    :param what: names the batch in the message, e.g. ``"init_data batch 3"``.
    :raises InitDataError: ``"<what> does not fit the model: <error>"``; when an input's dtype
        does not match the model's parameters, the message says which input, its dtype and what
        is allowed.
    """
    try:
        return model(*args, **kwargs)
    except NNCompressError:
        raise
    except Exception as exc:
        hint = dtype_mismatch(model, args, kwargs, exc)
        raise InitDataError(
            f"{what} does not fit the model: " + (f"{hint}. " if hint else "") + f"{type(exc).__name__}: {exc}"
        ) from exc


def forward_batches(
    model: nn.Module, init_data: Iterable[Any], num_samples: int, desc: str, progress: bool = True
) -> int:
    """Run whole batches of ``init_data`` through ``model`` under ``no_grad`` until ``num_samples``.

    :param model: the model, in whatever mode the caller set.
    :param init_data: ``(inputs, target)`` pairs, tensors or dicts of keyword inputs.
    :param num_samples: samples wanted (at least one batch runs).
    :param desc: progress bar label.
    :param progress: show a progress bar.
    :return: samples run.
    :raises InitDataError: for empty data or a batch the model cannot take (naming the batch).
    """
    seen = 0
    with tqdm(total=num_samples, desc=desc, unit="sample", disable=not progress, leave=False) as bar:
        with torch.no_grad():
            for i, batch in enumerate(init_data):
                args, kwargs = split_batch(batch)
                call_model(model, args, kwargs, f"init_data batch {i}")
                n = batch_size(args, kwargs)
                seen += n
                bar.update(n)
                if seen >= num_samples:
                    break
    if seen == 0:
        raise InitDataError(f"init_data is empty: {desc} got no batch")
    return seen
