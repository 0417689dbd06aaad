"""The inserted quantizer modules: a learnable fake quantizer and its PyTorch-native strip form.

:class:`FakeQuantizer` trains its range (and zero point, when asymmetric) with the weights, with
NNCF 2.x's parameterisation and gradient (see the class). Its range comes from range
initialisation (a :class:`~nncompress.functional.ranges.RangeCollector` attached for the
calibration passes), or, failing that, from the first tensor it sees.

:class:`NativeFakeQuantize` is what ``strip(StripFormat.NATIVE)`` leaves: PyTorch's
``torch.fake_quantize_per_{tensor,channel}_affine`` with fixed parameters, which the ONNX
exporter turns into QuantizeLinear/DequantizeLinear. Those ops take 8-bit ranges only, so a
sub-8-bit or narrow range is expressed exactly as a clamp to the narrower range followed by an
8-bit quantizer with the same step: every value lands on the same level.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nncompress.api.compression import StripFormat
from nncompress.errors import InitDataError, InvalidArgumentError, NonFiniteError
from nncompress.functional.quantize import (
    dequantize,
    fake_quantize,
    fake_quantize_learnable,
    fake_quantize_rows_learnable,
    integer_range,
    quantize,
    scale_zero_point,
)
from nncompress.functional.ranges import RangeCollector, all_reduce_range

from .params import QuantizerParams

_MIN_SCALE = 1e-8

ACTIVATION_MIN_RANGE = 1e-3
"""Narrowest range an activation quantizer is initialised to (a dead ReLU, a constant zero).

Below a step of about 1e-7 onnxruntime's integer kernels no longer agree with PyTorch (an
all-zero activation's step of 1e-8 gave logits off by 0.2-0.4 once the activation was non-zero),
and a step that small cannot be trained by SGD: a gradient of 1e-3 moves it a thousand-fold."""

RELATIVE_MIN_RANGE = 1e-3
"""Per-channel ranges are at least this share of the widest channel's range (all-zero channels)."""

MIN_STEP_FRACTION = 1e-3
"""During training the step never falls below this share of the largest step set at initialisation."""


class FakeQuantizer(nn.Module):
    """Learnable fake quantizer of one tensor (a weight or an activation).

    The trained parameter ``scale`` is, as NNCF 2.x's, the *range* ``a = s * L``: the step ``s``
    times ``L`` (:meth:`range_divisor`), i.e. the largest magnitude of a symmetric range, the
    width of an asymmetric one. Its gradient is NNCF's: summed over the
    elements it covers, the upstream gradient times ``(q(x) - x) / a`` inside the range, ``1``
    above it and ``qmin / qmax`` below it (:func:`~nncompress.functional.quantize.fake_quantize_learnable`
    on ``a / L`` with ``grad_factor`` 1), times ``compression_lr_multiplier``.

    A parameter of the magnitude of the tensor it quantizes is what keeps optimizers sane: with
    the step itself (1e-4 for many weights) as the parameter and LSQ's gradient factor, 10 steps
    at lr 1e-3 grew weight steps of random-initialised MobileNetV2 / ResNet-50 / MobileNetV3-small
    up to 95x / 37x / 32x under Adam and 272x / 1000x / 1.3x under SGD; as the range, at most 1.7x
    (``benchmarks/qat_stability.py``).

    :param params: bits, mode, signedness, granularity, narrow range.
    :param name: the op or weight it quantizes (for messages and statistics).
    :param group: ``weights`` or ``activations``.
    :param channel_axis: per-channel axis, or ``None`` for per-tensor.
    :param num_channels: size of that axis.
    """

    _version = 2  # 1: nncompress 0.1, ``scale`` was the step (converted on load)

    def __init__(
        self, params: QuantizerParams, name: str, group: str, channel_axis: int | None = None, num_channels: int = 1
    ) -> None:
        super().__init__()
        self.bits = params.bits
        self.symmetric = params.symmetric
        self.narrow_range = params.narrow_range
        self.signed_fixed = params.signed is not None
        self.axis = channel_axis
        self.name = name
        self.group = group
        self.enabled = True
        shape = (num_channels,) if channel_axis is not None else ()
        self.scale = nn.Parameter(torch.ones(shape))
        if self.symmetric:
            self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        else:
            self.zero_point = nn.Parameter(torch.zeros(shape))
        self.signed: torch.Tensor
        self.initialized: torch.Tensor
        self.register_buffer("signed", torch.tensor(True if params.signed is None else params.signed))
        self.register_buffer("initialized", torch.tensor(False))
        self._collecting = False
        self._collector: RangeCollector | None = None
        self._collector_args: tuple[str, float, float] = ("min_max", 0.0, 100.0)
        self._reduce_mode = "extremes"
        self._levels: tuple[int, int] | None = None  # cached (qmin, qmax) once initialised
        self._validated = False
        self._zero_is_zero = False  # cached with ``_levels``: a symmetric quantizer's zero point is 0
        self._dq: Int8Weight | None = None
        self.lr_multiplier = 1.0  # compression_lr_multiplier: scales the step's (and zero point's) gradient
        # the smallest step training may reach (see MIN_STEP_FRACTION), set with the range
        self.min_scale: torch.Tensor
        self.register_buffer("min_scale", torch.tensor(_MIN_SCALE))
        self._min_step = _MIN_SCALE  # the smallest step, a python float cached with ``_levels``
        self._divisor = 1.0  # L, from range to step, cached with ``_levels``
        self.copy_output = False  # an in-place op (``x += y``) overwrites the output: hand out a copy

    @property
    def levels(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the integer range."""
        return integer_range(self.bits, bool(self.signed), self.narrow_range)

    @staticmethod
    def range_divisor(qmin: int, qmax: int, symmetric: bool) -> float:
        """``L``, with step = range / L. Symmetric: ``qmax`` (``min(qmax, -qmin)`` for a signed
        range), so the range is the largest magnitude; asymmetric: ``qmax - qmin``, so the range
        is the width (NNCF 2.x's ``input_range``)."""
        if not symmetric:
            return float(qmax - qmin)
        return float(qmax if qmin == 0 else min(qmax, -qmin))

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        gran = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"{self.group}, {self.bits} bit, {kind}, {gran}, enabled={self.enabled}"

    # -- range initialisation ------------------------------------------------------------------

    def start_collecting(self, range_type: str, min_percentile: float, max_percentile: float) -> None:
        """Collect statistics of the tensors passing through (they pass unchanged) until :meth:`finish_collecting`."""
        self._collector_args = (range_type, min_percentile, max_percentile)
        self._collector = None
        self._reduce_mode = "mean" if range_type.startswith("mean") else "extremes"
        self._collecting = True

    def finish_collecting(self) -> bool:
        """Set the range from what was collected (agreed across ranks). :return: whether any data came."""
        collector = self._collector
        self._collecting = False
        self._collector = None
        if collector is None:
            return False
        lo, hi = collector.result()
        lo, hi = all_reduce_range(lo, hi, mode=self._reduce_mode)
        self.set_range(lo, hi)
        return True

    def set_lr_multiplier(self, multiplier: float) -> None:
        """NNCF 2.x's ``compression_lr_multiplier``: the range's (and zero point's) gradient is
        multiplied by it (it is the kernel's ``grad_factor``, so it costs nothing); 0 freezes them."""
        frozen = multiplier == 0.0
        self.lr_multiplier = 1.0 if frozen else float(multiplier)  # the kernel's factor must be > 0
        for p in self.parameters(recurse=False):
            p.requires_grad_(not frozen)

    def abort_collecting(self) -> None:
        """Stop collecting and drop what was collected; the range stays as it was."""
        self._collecting = False
        self._collector = None

    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Set step and zero point to cover ``[lo, hi]``; unsigned if ``lo >= 0`` unless forced.

        A range narrower than the floor is widened upwards (``hi = lo + floor``): for an activation
        the floor is :data:`ACTIVATION_MIN_RANGE`, for each channel of a per-channel quantizer
        :data:`RELATIVE_MIN_RANGE` times the widest channel's range. The step training may reach
        is then bounded below by :data:`MIN_STEP_FRACTION` times the largest step.
        """
        with torch.no_grad():
            lo, hi = lo.float(), hi.float()
            if not self.signed_fixed:
                self.signed.fill_(bool((lo < 0).any()))
            width = hi - lo
            floor = width.max() * RELATIVE_MIN_RANGE if width.dim() else width.new_zeros(())
            if self.group == "activations":
                floor = floor.clamp_min(ACTIVATION_MIN_RANGE)
            hi = torch.maximum(hi, lo + floor)
            qmin, qmax = self.levels
            scale, zp = scale_zero_point(lo, hi, qmin, qmax, self.symmetric)
            divisor = self.range_divisor(qmin, qmax, self.symmetric)
            self.scale.copy_(scale.reshape(self.scale.shape) * divisor)
            self.zero_point.copy_(zp.reshape(self.zero_point.shape).to(self.zero_point.dtype))
            self.min_scale.fill_(max(_MIN_SCALE, float(scale.max()) * MIN_STEP_FRACTION) * divisor)
            self.initialized.fill_(True)
            self._levels = None

    def _collect(self, x: torch.Tensor) -> None:
        if self._collector is None:
            range_type, lo_p, hi_p = self._collector_args
            axes = None
            if self.axis is not None:
                axis = self.axis % x.dim()
                axes = tuple(d for d in range(x.dim()) if d != axis)
            self._collector = RangeCollector(range_type, axes, min_percentile=lo_p, max_percentile=hi_p)
        try:
            self._collector.update(x.detach())  # checks for NaN / inf
        except InvalidArgumentError as exc:
            raise InitDataError(
                f"range initialisation: the {self.group} quantized at {self.name} contain NaN or inf "
                f"({exc}); check the init_data and the model"
            ) from exc

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (pass it through while collecting statistics or when disabled)."""
        if self._collecting:
            self._collect(x)
            return x
        if not self.enabled or not x.is_floating_point():
            return x
        if self._levels is None:  # first call, or new state loaded: read the buffers once
            self._refresh(x)
        qmin, qmax = self._levels  # type: ignore[misc]
        # Arguments are checked on the first call; afterwards shapes and dtypes cannot change.
        # a zero point known to be 0 is passed as None: the math then skips adding and subtracting it
        zero_point = None if self._zero_is_zero else self.zero_point
        step = self.scale / self._divisor  # one tiny op: the gradient reaches the range as NNCF's
        out = fake_quantize_learnable(x, step, zero_point, qmin, qmax, self.axis, self.lr_multiplier,
                                      validate=not self._validated, min_scale=self._min_step)
        self._validated = True
        return out.clone() if self.copy_output else out

    def _refresh(self, x: torch.Tensor) -> None:
        """Read the buffers into plain attributes once (first call, or after a state was loaded)."""
        if not bool(self.initialized):
            self._init_from(x)
        if not self.finite():
            self.raise_non_finite()
        self._levels = self.levels
        self._zero_is_zero = self.symmetric and not bool(self.zero_point.any())
        self._divisor = self.range_divisor(*self._levels, self.symmetric)
        self._min_step = max(float(self.min_scale) / self._divisor, _MIN_SCALE)

    def parameter_sum(self) -> torch.Tensor:
        """The sum of the range and a learned zero point: non-finite iff one of them is."""
        total = self.scale.detach().sum()
        if self.zero_point.is_floating_point():
            total = total + self.zero_point.detach().sum()
        return total

    def finite(self) -> bool:
        """Whether the range (and a learned zero point) are finite: one small device sync."""
        return math.isfinite(float(self.parameter_sum()))

    def raise_non_finite(self) -> None:
        """:raises NonFiniteError: naming this quantizer and what to change."""
        raise NonFiniteError(
            f"the {self.group} quantizer at {self.name} has a non-finite range ({self.scale.detach().flatten()[:4]}"
            f"...): training diverged. Lower the learning rate, or the quantizers' with "
            f'"compression_lr_multiplier" (e.g. 0.1) in the quantization section'
        )

    def _step(self) -> torch.Tensor:
        """The step in use: ``max(|scale|, min_scale) / L``, detached."""
        divisor = self.range_divisor(*self.levels, self.symmetric)
        return self.scale.detach().abs().clamp_min(float(self.min_scale)).div(divisor).clamp_min(_MIN_SCALE)
    def embedding_rows(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Run an ``embedding`` op reading this quantizer's weight, quantizing only the rows it reads.

        Same values and gradients as quantizing the whole table first (per-row steps, symmetric),
        at the cost of the looked-up rows. ``None`` when that does not apply (asymmetric, not
        per row, ``max_norm``, disabled, collecting): the caller then quantizes the whole weight.
        """
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if (self._collecting or not self.enabled or not self.symmetric or self.axis != 0
                or kwargs.get("max_norm") is not None or (len(args) > 3 and args[3] is not None)
                or not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32):
            return None
        if self._levels is None:
            self._refresh(weight)
        qmin, qmax = self._levels  # type: ignore[misc]
        rows = func(*args, **kwargs)  # (..., d), gradients flow to the rows read
        ids = args[0] if args else kwargs["input"]
        step = (self.scale / self._divisor).abs().clamp_min(self._min_step).unsqueeze(1)  # (num_rows, 1)
        row_scale = torch.nn.functional.embedding(ids, step)  # (..., 1)
        return fake_quantize_rows_learnable(rows, row_scale, qmin, qmax, self.lr_multiplier)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        scale, signed = state_dict.get(prefix + "scale"), state_dict.get(prefix + "signed")
        version = local_metadata.get("version")
        if ((version is None or version < 2) and prefix + "min_scale" not in state_dict
                and isinstance(scale, torch.Tensor) and signed is not None):
            # a checkpoint from nncompress 0.1 (module version 1, no step floor), whose ``scale``
            # was the step: make it the range
            levels = integer_range(self.bits, bool(signed), self.narrow_range)
            divisor = self.range_divisor(*levels, self.symmetric)
            state_dict[prefix + "scale"] = scale * divisor
            floor = max(_MIN_SCALE, float(scale.abs().max()) * MIN_STEP_FRACTION) * divisor
            state_dict[prefix + "min_scale"] = torch.tensor(floor)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        self._levels = None  # signedness may have changed

    def _init_from(self, x: torch.Tensor) -> None:
        """No range initialisation ran: take the range of the first tensor seen."""
        with torch.no_grad():
            if self.axis is None:
                lo, hi = x.min(), x.max()
            else:
                moved = x.detach().movedim(self.axis, 0).flatten(1)
                lo, hi = moved.min(dim=1).values, moved.max(dim=1).values
        self.set_range(lo, hi)

    # -- strip ---------------------------------------------------------------------------------

    def quantized(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the quantization grid, without gradients to the quantizer (for baking)."""
        qmin, qmax = self.levels
        zp = self.zero_point.detach()
        zp = zp if not zp.is_floating_point() else zp.round().clamp(qmin, qmax).to(torch.int32)
        return fake_quantize(x, self._step(), zp, qmin, qmax, self.axis)

    def bake_(self, weight: torch.Tensor, strip_format: StripFormat) -> bool:
        """Put the weight on the grid. IN_PLACE: done, remove me; NATIVE: keep a native quantizer;
        DQ: keep the integer codes in an :class:`Int8Weight` and empty the float parameter."""
        if not self.enabled:
            return True
        if not bool(self.initialized):
            self._init_from(weight.detach())
        if strip_format is StripFormat.DQ:
            qmin, qmax = self.levels
            scale = self._step()
            zp = self.zero_point.detach()
            zp = (zp.round().clamp(qmin, qmax) if zp.is_floating_point() else zp).to(torch.int32)
            codes = quantize(weight.detach(), scale, zp, qmin, qmax, self.axis).to(torch.int8)
            self._dq = Int8Weight(codes, scale, zp, self.axis, weight.dtype)
            weight.data = torch.empty(0, dtype=weight.dtype, device=weight.device)
            return False
        weight.data.copy_(self.quantized(weight.detach()))
        return strip_format is StripFormat.IN_PLACE

    def strip_to(self, strip_format: StripFormat) -> nn.Module | None:
        """The PyTorch-native equivalent; ``None`` (removed) when disabled or for IN_PLACE.

        IN_PLACE leaves a plain float model (the original class and keys): weights are on their
        grid, activation quantizers are dropped.
        """
        if not self.enabled or not bool(self.initialized) or strip_format is StripFormat.IN_PLACE:
            return None
        if strip_format is StripFormat.DQ and self.group == "weights":
            return self._dq
        qmin, qmax = self.levels
        zp = self.zero_point.detach()
        zp = zp if not zp.is_floating_point() else zp.round().clamp(qmin, qmax)
        return NativeFakeQuantize(self._step(), zp.to(torch.int32), qmin, qmax,
                                  self.axis, clamp=self.group != "weights")


class Int8Weight(nn.Module):
    """A weight stored as integer codes plus step (``StripFormat.DQ``), dequantized when read.

    The float parameter it stands for is emptied; each time an op reads it, this module returns
    ``(codes - zero_point) * scale`` in the parameter's dtype. Codes of sub-8-bit quantizers are
    stored one per int8 (no packing).

    :param codes: int8 codes, the weight's shape.
    :param scale: step, 0-d or per channel.
    :param zero_point: int32, the shape of ``scale``.
    :param axis: channel axis, or ``None``.
    :param dtype: the dtype to dequantize to.
    """

    def __init__(
        self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.codes: torch.Tensor
        self.scale: torch.Tensor
        self.zero_point: torch.Tensor
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).clone())
        self.axis, self.dtype = axis, dtype

    def forward(self, emptied: torch.Tensor) -> torch.Tensor:
        """:return: the dequantized weight (the emptied parameter passed in is ignored)."""
        return dequantize(self.codes.to(torch.int32), self.scale, self.zero_point, self.axis).to(self.dtype)


class NativeFakeQuantize(nn.Module):
    """Fixed fake quantization with PyTorch's native ops; exports to ONNX Q/DQ.

    :param scale: step, 0-d or per channel.
    :param zero_point: int32, same shape.
    :param qmin: lowest level of the (possibly sub-8-bit) range.
    :param qmax: highest level.
    :param axis: channel axis for per-channel, else ``None``.
    :param clamp: clamp to ``[qmin, qmax]`` first when that is narrower than 8 bits; weights
        already baked onto their grid skip it, so the exported weight is a plain constant.
    """

    def __init__(
        self, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None,
        clamp: bool = True,
    ) -> None:
        super().__init__()
        self.clamp = clamp
        if qmax - qmin > 255:
            raise InvalidArgumentError(f"range [{qmin}, {qmax}] is wider than 8 bits")
        self.scale: torch.Tensor
        self.zero_point: torch.Tensor
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).clone())
        self.qmin, self.qmax, self.axis = qmin, qmax, axis
        # the 8-bit range QuantizeLinear supports, holding [qmin, qmax]
        self.q8 = (-128, 127) if qmin < 0 else (0, 255)

    def extra_repr(self) -> str:
        return f"levels=[{self.qmin}, {self.qmax}], axis={self.axis}"

    def set_channel_scale(self, factor: torch.Tensor) -> None:
        """Multiply the step per output channel (axis 0), e.g. after folding a BatchNorm."""
        if self.axis is None:
            self.scale = self.scale.expand(factor.shape).clone()
            self.zero_point = self.zero_point.expand(factor.shape).clone()
            self.axis = 0
        self.scale = self.scale * factor.abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp to the narrow range when it is not a full 8-bit one, then fake-quantize."""
        if not x.is_floating_point():
            return x
        if self.clamp and (self.qmin, self.qmax) != self.q8:
            shape = [1] * x.dim()
            if self.axis is not None:
                shape[self.axis] = -1
            s, z = self.scale.view(shape), self.zero_point.view(shape).float()
            x = torch.clamp(x, (self.qmin - z) * s, (self.qmax - z) * s)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, *self.q8)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, *self.q8)
