"""ONNX export of a stripped model, written atomically.

The TorchScript-based exporter (``dynamo=False``) is used: it handles data-dependent Python
control flow by tracing the path the example input takes, and turns PyTorch's native
fake-quantize ops into QuantizeLinear/DequantizeLinear. The file is written under a temporary
name in the target folder and renamed, so a failed export leaves no partial file and an
existing file is replaced only by a complete one. Folders created for the file are removed again
when the export fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from nncompress.errors import ExportError, InvalidArgumentError
from nncompress.torch.inputs import ModelInputs
from nncompress.torch.onnx_constants import fold_constant_quantize

DEFAULT_OPSET = 17


class _KeywordInputs(nn.Module):
    """Presents a model that takes keyword inputs as one taking positional tensors only.

    The TorchScript exporter binds a trailing dict of keyword arguments poorly (Hugging Face
    models then get "multiple values" for their keyword-only options), so keyword inputs are
    passed positionally to this wrapper, which calls the model by keyword.
    """

    def __init__(self, model: nn.Module, num_positional: int, keywords: list[str]) -> None:
        super().__init__()
        self.model = model
        self.num_positional = num_positional
        self.keywords = keywords

    def forward(self, *tensors: Any) -> Any:
        positional = tensors[: self.num_positional]
        named = dict(zip(self.keywords, tensors[self.num_positional :]))
        return self.model(*positional, **named)
_FORMAT = re.compile(r"^onnx(?:_(\d+))?$")


def opset_from_format(save_format: str | None) -> int:
    """The ONNX opset for ``save_format``: ``None``/``"onnx"`` -> 17, ``"onnx_<N>"`` -> N.

    :raises InvalidArgumentError: for any other format or an opset outside 7..21.
    """
    match = _FORMAT.match(save_format or "onnx")
    if match is None:
        raise InvalidArgumentError(
            f"save_format {save_format!r} is not supported; allowed: 'onnx' or 'onnx_<opset>' (e.g. 'onnx_17')"
        )
    opset = int(match.group(1) or DEFAULT_OPSET)
    if not 7 <= opset <= 21:
        raise InvalidArgumentError(f"ONNX opset {opset} in save_format {save_format!r} is outside 7..21")
    return opset


def _batch_axes(input_names: list[str], tensors: tuple[Any, ...]) -> dict[str, dict[int, str]]:
    """Axis 0 of every input with at least one dimension is a dynamic ``batch`` axis."""
    return {
        name: {0: "batch"}
        for name, t in zip(input_names, tensors)
        if isinstance(t, torch.Tensor) and t.dim() > 0
    }


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents.

    :return: the folders created, outermost first.
    :raises ExportError: naming the folder that cannot be created and why (a file is in the way,
        no permission...); the folders created before the failure are removed again.
    """
    missing: list[Path] = []
    current = folder
    while not current.exists():
        if current.is_symlink():  # a dangling link: mkdir would fail with a confusing error
            raise ExportError(f"cannot create the folder {str(folder)!r}: {str(current)!r} is a broken symlink")
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    if not missing and not folder.is_dir():
        raise ExportError(f"cannot write into {str(folder)!r}: it is a file, not a folder")
    if missing and current.exists() and not current.is_dir():
        raise ExportError(
            f"cannot create the folder {str(folder)!r}: {str(current)!r} is a file, not a folder"
        )
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        except OSError as exc:
            _remove_folders(created)
            raise ExportError(
                f"cannot create the folder {str(path)!r} for the export: {exc.strerror or exc}"
            ) from exc
        created.append(path)
    return created


def _remove_folders(created: list[Path]) -> None:
    """Remove folders made by :func:`_make_folders`, innermost first, where they are still empty."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def export_onnx(
    model: nn.Module,
    inputs: ModelInputs,
    save_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Export ``model`` to ONNX at ``save_path``, atomically.

    :param model: a stripped model (only PyTorch-native ops).
    :param inputs: ``(args, kwargs)`` example inputs for the forward.
    :param save_path: the ``.onnx`` file to write.
    :param opset: the ONNX opset version.
    :param input_names: names of the graph inputs (default ``input_0``... then keyword names);
        axis 0 of each input is exported as a dynamic batch axis.
    :param output_names: names of the graph outputs.
    :param dynamic_axes: ``{input or output name: {axis: name}}`` for ``torch.onnx.export``; by
        default axis 0 of every input (the batch).
    :raises ExportError: if the folder cannot be created or the exporter fails; nothing is written
        then, and no folder is left behind.
    """
    try:
        target = Path(save_path)
    except TypeError as exc:
        raise InvalidArgumentError(f"save_path must be a path (str or os.PathLike), got {save_path!r}") from exc
    if not target.name:
        raise InvalidArgumentError(f"save_path must name a file, got {str(save_path)!r}")
    created = _make_folders(target.parent)
    try:
        _export(model, inputs, target, opset, input_names, output_names, dynamic_axes)
    except BaseException:
        _remove_folders(created)
        raise


def _export(model: nn.Module, inputs: ModelInputs, target: Path, opset: int,
            input_names: list[str] | None, output_names: list[str] | None,
            dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """:func:`export_onnx` once the folder exists: export under a temporary name, then rename."""
    args, kwargs = inputs
    runnable: nn.Module = _KeywordInputs(model, len(args), list(kwargs)) if kwargs else model
    export_args = (*args, *kwargs.values())
    if input_names is None:
        input_names = [f"input_{i}" for i in range(len(args))] + list(kwargs)
    tmp = str(target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                runnable,
                export_args,
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes if dynamic_axes is not None else _batch_axes(input_names, export_args),
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        if fold_constant_quantize(proto):
            onnx.save(proto, tmp)
        os.replace(tmp, target)
    except Exception as exc:
        raise ExportError(f"ONNX export to {str(target)!r} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.remove(tmp)
