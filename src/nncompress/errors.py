"""Error classes raised by nncompress.

Every error a user can trigger with bad input is one of these classes. Messages name the bad
value (a JSON path, an op name, an argument) and what is allowed instead. Each class also derives
from the closest built-in exception (``ValueError``, ``TypeError``...) so that existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations

from typing import Any


class NNCompressError(Exception):
    """Base class of every error raised by nncompress."""


class ConfigError(NNCompressError, ValueError):
    """A compression config is invalid.

    :param json_path: where in the config the problem is, e.g. ``compression[0].params.sparsity_target``.
    :param message: what is wrong and what is allowed.
    :param value: the offending value, when there is one.
    """

    def __init__(self, json_path: str, message: str, value: Any = None) -> None:
        self.json_path = json_path
        self.value = value
        super().__init__(f"{json_path}: {message}" if json_path else message)


class UnknownAlgorithmError(ConfigError):
    """The config names an algorithm that nncompress (and NNCF 2.x) never had."""


class UnsupportedAlgorithmError(ConfigError, NotImplementedError):
    """The config names a known NNCF 2.x algorithm that nncompress does not implement (yet)."""


class InvalidArgumentError(NNCompressError, ValueError):
    """A function or method argument is outside what is allowed."""


class ScopeMatchError(NNCompressError, ValueError):
    """An ``ignored_scopes`` / ``target_scopes`` entry matches no operation of the model."""


class CaptureError(NNCompressError, RuntimeError):
    """The model failed while nncompress ran it once to capture its operations."""


class InputInfoError(NNCompressError, ValueError):
    """``input_info`` (or ``example_input``) does not describe inputs the model accepts."""


class InitDataError(NNCompressError, ValueError):
    """``init_data`` is missing, empty or its items do not fit the model."""


class CompressionStateError(NNCompressError, ValueError):
    """A saved ``compression_state`` does not belong to this config or model."""


class ExportError(NNCompressError, RuntimeError):
    """Exporting the model failed; no file was written."""


class NonFiniteError(NNCompressError, FloatingPointError):
    """A compressed model produced NaN or infinity; the message names the inserted module (a
    quantizer, a mask) or the operation where the first non-finite value appeared."""


class DistillationError(NNCompressError, RuntimeError):
    """``knowledge_distillation`` cannot compute its loss from the model's outputs (no output
    tensor of a shape its loss type takes, or teacher and student outputs that do not match)."""


class GraphMismatchError(NNCompressError, RuntimeError):
    """A forward ran operations that differ from the ones captured when the model was
    compressed, so inserted modules would land on the wrong operations."""


__all__ = [
    "CaptureError",
    "CompressionStateError",
    "ConfigError",
    "DistillationError",
    "ExportError",
    "GraphMismatchError",
    "InitDataError",
    "InputInfoError",
    "InvalidArgumentError",
    "NNCompressError",
    "NonFiniteError",
    "ScopeMatchError",
    "UnknownAlgorithmError",
    "UnsupportedAlgorithmError",
]


class MissingPackageError(NNCompressError, ImportError):
    """A package an optional feature needs is not installed; the message says how to install it."""
