"""Options of :func:`nncompress.compress_weights`: modes, sensitivity metrics, advanced parameters.

Names and defaults follow NNCF 3.x's ``nncf.compress_weights`` so code written for it reads the
same here; each enum also accepts its value string (``mode="int4_sym"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from nncompress.errors import InvalidArgumentError


class CompressWeightsMode(str, Enum):
    """Weight format of the compressed layers (see :mod:`nncompress.functional.weight_quant`)."""

    INT8_SYM = "int8_sym"
    INT8_ASYM = "int8_asym"
    INT4_SYM = "int4_sym"
    INT4_ASYM = "int4_asym"
    NF4 = "nf4"
    #: NNCF's name for per-channel INT8 asymmetric (its 2.x default).
    INT8 = "int8"

    @property
    def is_4bit(self) -> bool:
        """INT4_SYM, INT4_ASYM or NF4: a primary mode mixed with the backup mode by ``ratio``."""
        return self in (CompressWeightsMode.INT4_SYM, CompressWeightsMode.INT4_ASYM, CompressWeightsMode.NF4)

    @property
    def spec_mode(self) -> str:
        """The mode name of :class:`~nncompress.functional.weight_quant.WeightQuantSpec`."""
        return "int8_asym" if self is CompressWeightsMode.INT8 else self.value


class BackupMode(str, Enum):
    """Format of the layers a ``ratio`` below 1 (or the output layer) keeps out of the 4-bit mode."""

    NONE = "none"
    INT8_SYM = "int8_sym"
    INT8_ASYM = "int8_asym"


class SensitivityMetric(str, Enum):
    """How layers are ranked when ``ratio < 1`` chooses which stay in the backup mode.

    ``weight_quantization_error`` needs no data; the others weight the error by statistics of
    each layer's input activations, collected on ``dataset``.
    """

    WEIGHT_QUANTIZATION_ERROR = "weight_quantization_error"
    HESSIAN_INPUT_ACTIVATION = "hessian_input_activation"
    MEAN_ACTIVATION_VARIANCE = "mean_activation_variance"
    MAX_ACTIVATION_VARIANCE = "max_activation_variance"
    MEAN_ACTIVATION_MAGNITUDE = "mean_activation_magnitude"


class GroupSizeFallbackMode(str, Enum):
    """What happens to a layer whose input size ``group_size`` does not divide.

    ``ragged`` (ours, the default) quantizes it with a shorter last group; ``ignore`` keeps it in the
    backup mode; ``error`` raises.
    """

    RAGGED = "ragged"
    IGNORE = "ignore"
    ERROR = "error"


@dataclass(frozen=True)
class AWQParams:
    """Activation-aware weight quantization (AWQ): per-input-channel scales before rounding.

    For each layer, ``s = mean|x|^alpha`` (normalised) for ``alpha`` on a grid of ``steps`` points
    in ``[alpha_min, alpha_max]``; the alpha whose quantized ``W diag(s)`` with inputs ``x / s``
    best reproduces the float output on the calibration tokens wins.

    :param subset_size: calibration samples whose tokens the search uses.
    :param alpha_min: smallest exponent tried.
    :param alpha_max: largest exponent tried.
    :param steps: grid points between them.
    """

    subset_size: int = 32
    alpha_min: float = 0.0
    alpha_max: float = 1.0
    steps: int = 20


@dataclass(frozen=True)
class ScaleEstimationParams:
    """Scale estimation: each group's scale refit to minimise the activation-weighted error.

    :param subset_size: calibration samples whose statistics are used.
    :param initial_steps: candidate rescalings of the round-to-nearest scale tried first.
    :param scale_steps: alternations of re-rounding and least-squares refit of the scale.
    """

    subset_size: int = 64
    initial_steps: int = 9
    scale_steps: int = 5


@dataclass(frozen=True)
class GPTQParams:
    """GPTQ: columns quantized one at a time, the error pushed onto the columns not yet quantized.

    :param subset_size: calibration samples that form each layer's Hessian ``X^T X``.
    :param damp_percent: diagonal damping as a fraction of the Hessian's mean diagonal.
    :param block_size: columns updated together (lazy batch updates).
    """

    subset_size: int = 128
    damp_percent: float = 0.1
    block_size: int = 128


@dataclass(frozen=True)
class AdvancedCompressionParameters:
    """Advanced options of :func:`~nncompress.compress_weights`.

    :param awq_params: AWQ search settings.
    :param scale_estimation_params: scale estimation settings.
    :param gptq_params: GPTQ settings.
    :param group_size_fallback_mode: what to do where ``group_size`` does not divide a layer's input.
    :param progress: show progress bars for long steps.
    """

    awq_params: AWQParams = field(default_factory=AWQParams)
    scale_estimation_params: ScaleEstimationParams = field(default_factory=ScaleEstimationParams)
    gptq_params: GPTQParams = field(default_factory=GPTQParams)
    group_size_fallback_mode: GroupSizeFallbackMode | str = GroupSizeFallbackMode.RAGGED
    progress: bool = True

    def __post_init__(self) -> None:
        _positive(self.awq_params.subset_size, "awq_params.subset_size")
        _positive(self.awq_params.steps, "awq_params.steps")
        if not 0.0 <= self.awq_params.alpha_min <= self.awq_params.alpha_max <= 1.0:
            raise InvalidArgumentError(
                "awq_params needs 0 <= alpha_min <= alpha_max <= 1, got "
                f"{self.awq_params.alpha_min!r}..{self.awq_params.alpha_max!r}"
            )
        _positive(self.scale_estimation_params.subset_size, "scale_estimation_params.subset_size")
        _positive(self.scale_estimation_params.initial_steps, "scale_estimation_params.initial_steps")
        _positive(self.scale_estimation_params.scale_steps, "scale_estimation_params.scale_steps")
        _positive(self.gptq_params.subset_size, "gptq_params.subset_size")
        _positive(self.gptq_params.block_size, "gptq_params.block_size")
        damp = self.gptq_params.damp_percent
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp <= 1:
            raise InvalidArgumentError(f"gptq_params.damp_percent must be in (0, 1], got {damp!r}")
        object.__setattr__(
            self, "group_size_fallback_mode", to_enum(GroupSizeFallbackMode, self.group_size_fallback_mode, "group_size_fallback_mode")
        )


def _positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")


def to_enum(cls: type[Enum], value: object, name: str) -> Enum:
    """``value`` as a member of ``cls`` (a member or its value string), else a clear error."""
    if isinstance(value, cls):
        return value
    for member in cls:
        if isinstance(value, str) and value.lower() == member.value:
            return member
    allowed = ", ".join(m.value for m in cls)
    raise InvalidArgumentError(f"{name} must be one of {allowed} (or {cls.__name__} members), got {value!r}")
