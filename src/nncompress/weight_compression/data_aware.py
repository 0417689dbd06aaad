"""Data-aware weight compression: AWQ, scale estimation and GPTQ, block by block.

:func:`compress_data_aware` walks the model's repeated blocks (Llama's ``model.layers``, found by
:func:`find_blocks`) in order, holding only one block's inputs at a time:

1. the inputs of block 0 are captured for every calibration sample (a pre-hook records the
   block's ``args`` and ``kwargs`` and stops the forward there; a KV cache among them is dropped
   and ``use_cache`` set to ``False``, so re-running a block never sees stale keys);
2. for each block: the block runs on its inputs with float weights while pre-hooks on its planned
   linears collect what the algorithms need (mean ``|x|`` and ``x^T x`` for AWQ, mean ``x^2`` for
   scale estimation, ``x^T x`` for GPTQ; once per distinct input, so q/k/v share); the block's
   planned linears are compressed; their dequantized weights are put into the block and the
   block runs again to give the next block's inputs (the next block sees quantized outputs, as
   GPTQ's and AWQ's sequential modes); then the float weights are put back.

Per layer, as NNCF: AWQ first (it scales ``W`` to ``W diag(s)`` and gives the input multiplier
``1 / s``), then GPTQ (with scale estimation choosing each group's scale, if both are on) or
scale estimation on the scaled weight, whose statistics are rescaled accordingly
(``E[(x / s)^2] = E[x^2] / s^2``, ``H' = diag(1/s) H diag(1/s)``). The algorithms apply to 4-bit
layers only; 8-bit layers, and planned linears outside the blocks (``lm_head``), get
round-to-nearest: 8-bit RTN is close to lossless, and a layer outside the blocks would need one
more full pass of the model for its statistics.

The model is left exactly as it was (weights, train/eval flags, no hooks), also when an error
stops the run; the caller installs the compressed layers from the returned weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nncompress.errors import InitDataError, InvalidArgumentError
from nncompress.functional.activation_stats import ActivationStats
from nncompress.functional.awq import alpha_grid, awq_search_from_stats
from nncompress.functional.gptq import ScaleFn, gptq_quantize
from nncompress.functional.scale_estimation import estimate_scales
from nncompress.functional.weight_quant import (
    QuantizedWeight,
    WeightQuantSpec,
    dequantize_weight,
    quantize_weight,
)
from nncompress.torch.calibration import batch_size, call_model
from nncompress.torch.inputs import ModelInputs, split_batch
from nncompress.weight_compression.activation_hooks import InputHooks, LayerCollector, Needs
from nncompress.weight_compression.params import AWQParams, GPTQParams, ScaleEstimationParams

CompressedWeights = dict[str, tuple[QuantizedWeight, Tensor | None]]
"""``{linear name: (quantized weight, AWQ input multiplier 1/s [K] or None)}``."""

_CACHE_KEYS = ("cache", "past_key_value", "past_key_values", "layer_past")


class _StopForward(BaseException):
    """Raised by the capture hook to end the model's forward at block 0 (a BaseException, so that
    ``call_model``'s error wrapping and the model's own ``except Exception`` let it through)."""


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """The model's repeated blocks: the longest ``nn.ModuleList`` of one class holding ``nn.Linear``.

    :return: ``(prefix, blocks)``, e.g. ``("model.layers", [...])``; ``("", [model])`` without one.
    """
    best: tuple[str, list[nn.Module]] = ("", [model])
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        children = list(module)
        if len({type(c) for c in children}) != 1:
            continue
        if not all(any(isinstance(m, nn.Linear) for m in c.modules()) for c in children):
            continue
        if best[0] == "" or len(children) > len(best[1]):
            best = (name, children)
    return best


def as_model_inputs(samples: Sequence[Any]) -> list[ModelInputs]:
    """Samples as ``(args, kwargs)``: ``ModelInputs`` pairs stay, other items go through :func:`split_batch`."""
    out: list[ModelInputs] = []
    for item in samples:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], tuple) and isinstance(item[1], dict):
            out.append((item[0], item[1]))
        else:
            out.append(split_batch(item))
    if not out:
        raise InitDataError("data-aware weight compression needs at least one calibration sample, got none")
    return out


def collect_activation_stats(
    model: nn.Module, samples: Sequence[Any], linear_names: Sequence[str], progress: bool = False
) -> dict[str, ActivationStats]:
    """Per-input-channel statistics of the named linears' inputs over all ``samples`` (float model).

    :param model: the model (run in eval mode under ``no_grad``; its modes are restored).
    :param samples: calibration samples (``(args, kwargs)`` pairs, tensors or dicts).
    :param linear_names: qualified names of ``nn.Linear`` modules.
    :param progress: show a progress bar over the samples.
    :return: ``{name: ActivationStats}`` (layers reading the same input share one object).
    :raises InvalidArgumentError: for a name that is not a linear of the model.
    """
    inputs = as_model_inputs(samples)
    modules = _linears(model, linear_names)
    hooks = InputHooks(modules, Needs(stats={_ALL}))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), hooks.attached():
            for i, (args, kwargs) in enumerate(tqdm(inputs, desc="activation statistics", disable=not progress)):
                call_model(model, args, kwargs, f"calibration item {i}")
                hooks.sample_done(batch_size(args, kwargs))
    finally:
        for m, training in modes:
            m.training = training
    missing = [n for n in modules if n not in hooks.collectors and n not in hooks.owner]
    if missing:
        raise InitDataError(f"the calibration samples never ran these layers: {', '.join(missing)}")
    return {n: hooks.collector(n).activation_stats(_ALL) for n in modules}


_ALL = 2**62  # a sample budget larger than any dataset


def compress_data_aware(
    model: nn.Module,
    samples: Sequence[Any],
    plan: Mapping[str, WeightQuantSpec | None],
    awq: AWQParams | None = None,
    scale_estimation: ScaleEstimationParams | None = None,
    gptq: GPTQParams | None = None,
    progress: bool = True,
) -> CompressedWeights:
    """Quantize the planned linears with AWQ / scale estimation / GPTQ, block by block (module doc).

    :param model: the float model; left unchanged (also on error).
    :param samples: calibration samples (``(args, kwargs)`` pairs, tensors or dicts of keyword inputs).
    :param plan: ``{linear name: spec}``; names with ``None`` are skipped.
    :param awq: AWQ settings, ``None`` for none.
    :param scale_estimation: scale estimation settings, ``None`` for none.
    :param gptq: GPTQ settings, ``None`` for none.
    :param progress: show a progress bar over the blocks.
    :return: ``{name: (QuantizedWeight, input multiplier or None)}`` for every planned linear.
    :raises InvalidArgumentError: for a planned name that is not an ``nn.Linear`` of the model.
    :raises InitDataError: for samples the model cannot run or that never reach the blocks.
    """
    specs = {n: s for n, s in plan.items() if s is not None}
    modules = _linears(model, list(specs))
    inputs = as_model_inputs(samples)
    prefix, blocks = find_blocks(model)
    runner = _LayerCompressor(awq, scale_estimation, gptq)
    in_block = _assign_to_blocks(blocks, modules)
    if not runner.active or all(specs[n].bits != 4 for names in in_block for n in names):
        in_block = [[] for _ in blocks]  # round-to-nearest only: no forward pass needed
    originals = {n: m.weight.data for n, m in modules.items()}
    modes = [(m, m.training) for m in model.modules()]
    result: CompressedWeights = {}
    try:
        model.eval()
        with torch.no_grad():
            if any(in_block):
                block_inputs = inputs if prefix == "" else _capture_inputs(model, blocks[0], prefix, inputs)
                _run_blocks(_Blocks(prefix, blocks, in_block), block_inputs, modules, specs, runner, result, progress)
            for name in specs:
                if name not in result:
                    result[name] = (quantize_weight(modules[name].weight.data.float(), specs[name]), None)
    finally:
        for name, weight in originals.items():
            modules[name].weight.data = weight
        for m, training in modes:
            m.training = training
    return {n: result[n] for n in specs}


@dataclass
class _Blocks:
    prefix: str
    modules: list[nn.Module]
    linears: list[list[str]]  # planned linear names of each block


def _run_blocks(
    blocks: _Blocks, block_inputs: list[ModelInputs], modules: Mapping[str, nn.Linear],
    specs: Mapping[str, WeightQuantSpec], runner: _LayerCompressor, result: CompressedWeights, progress: bool,
) -> None:
    """Compress each block's planned linears in order; the next block sees the compressed outputs.

    Each block's float weights are put back once its outputs are computed (the caller's
    ``finally`` puts them back should anything fail in between).
    """
    last = max(i for i, names in enumerate(blocks.linears) if names)
    for i in tqdm(range(last + 1), desc="data-aware compression", unit="block", disable=not progress):
        names = blocks.linears[i]
        originals = {n: modules[n].weight.data for n in names}
        if names:
            collected = _collect(blocks.modules[i], blocks.prefix, block_inputs, {n: modules[n] for n in names},
                                 runner.needs)
            for name in names:
                result[name] = runner.compress(originals[name].float(), specs[name], collected.collector(name))
                modules[name].weight.data = _effective_weight(*result[name]).to(originals[name].dtype)
        if i < last:
            block_inputs = _next_inputs(blocks.modules[i], blocks.prefix, block_inputs)
        for name in names:
            modules[name].weight.data = originals[name]


class _LayerCompressor:
    """One layer's algorithms in NNCF's order: AWQ, then GPTQ (with SE scales) or SE."""

    def __init__(self, awq: AWQParams | None, se: ScaleEstimationParams | None, gptq: GPTQParams | None) -> None:
        self.awq, self.se, self.gptq = awq, se, gptq
        self.needs = Needs()
        if awq is not None:
            self.needs.stats.add(awq.subset_size)
            self.needs.hessian.add(awq.subset_size)
        if se is not None:
            self.needs.stats.add(se.subset_size)
        if gptq is not None:
            self.needs.hessian.add(gptq.subset_size)

    @property
    def active(self) -> bool:
        """Whether any data-aware algorithm is on."""
        return self.awq is not None or self.se is not None or self.gptq is not None

    def compress(self, w: Tensor, spec: WeightQuantSpec, stats: LayerCollector) -> tuple[QuantizedWeight, Tensor | None]:
        """``(qweight, multiplier)`` of float32 weight ``w`` from its input statistics."""
        if spec.bits != 4 or not self.active:
            return quantize_weight(w, spec), None
        qw = None
        s = torch.ones(w.shape[1], dtype=torch.float64, device=w.device)
        if self.awq is not None:
            a = self.awq
            res = awq_search_from_stats(w, stats.activation_stats(a.subset_size).mean_abs, stats.hessian(a.subset_size), spec,
                                        alpha_grid(a.alpha_min, a.alpha_max, a.steps))
            if res.alpha != 0.0:
                qw, s = res.qweight, 1.0 / res.input_multiplier.to(torch.float64)
                w = w * s.to(w.dtype)
        importance = None
        if self.se is not None:
            importance = (stats.activation_stats(self.se.subset_size).mean_sq.to(w.device) / s**2).to(w.dtype)
        if self.gptq is not None:
            h = stats.hessian(self.gptq.subset_size).to(w.device) / torch.outer(s, s)
            scale_fn = None if importance is None or self.se is None else _se_scale_fn(spec, importance, self.se)
            qw = gptq_quantize(w, h, spec, self.gptq.damp_percent, self.gptq.block_size, scale_fn)
        elif importance is not None and self.se is not None:
            qw = estimate_scales(w, spec, importance, initial_steps=self.se.initial_steps, scale_steps=self.se.scale_steps)
        elif qw is None:
            qw = quantize_weight(w, spec)
        multiplier = None if bool((s == 1).all()) else (1.0 / s).float()
        return qw, multiplier


def _se_scale_fn(spec: WeightQuantSpec, importance: Tensor, se: ScaleEstimationParams) -> ScaleFn:
    per_group = spec.with_group_size(-1)

    def scale(cols: Tensor, first: int) -> tuple[Tensor, Tensor | None]:
        qw = estimate_scales(cols, per_group, importance[first:first + cols.shape[1]],
                             initial_steps=se.initial_steps, scale_steps=se.scale_steps)
        return qw.scale[:, 0], None if qw.zero_point is None else qw.zero_point[:, 0]

    return scale


def _effective_weight(qw: QuantizedWeight, multiplier: Tensor | None) -> Tensor:
    """The float weight the compressed layer applies to its (unscaled) input."""
    w = dequantize_weight(qw)
    return w if multiplier is None else w * multiplier.to(w.dtype)


def _linears(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Linear]:
    found = dict(model.named_modules())
    out: dict[str, nn.Linear] = {}
    for name in names:
        m = found.get(name)
        if not isinstance(m, nn.Linear):
            what = "no module" if m is None else f"a {type(m).__name__}"
            raise InvalidArgumentError(f"data-aware compression works on nn.Linear layers; {name!r} is {what}")
        out[name] = m
    return out


def _assign_to_blocks(blocks: list[nn.Module], modules: Mapping[str, nn.Module]) -> list[list[str]]:
    """Planned linear names inside each block (in the model's module order)."""
    owner = {id(m): i for i, b in enumerate(blocks) for m in b.modules()}
    names: list[list[str]] = [[] for _ in blocks]
    for name, m in modules.items():
        i = owner.get(id(m))
        if i is not None:
            names[i].append(name)
    return names


def _drop_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without a KV cache (set to ``None``) and with ``use_cache=False``."""
    out = dict(kwargs)
    for key, value in kwargs.items():
        is_cache = any(c.__name__.endswith("Cache") for c in type(value).__mro__)
        if key in _CACHE_KEYS or is_cache:
            out[key] = None
        elif key == "use_cache":
            out[key] = False
    return out


def _capture_inputs(model: nn.Module, first: nn.Module, prefix: str, inputs: list[ModelInputs]) -> list[ModelInputs]:
    """The ``(args, kwargs)`` block 0 receives for every sample."""
    captured: list[ModelInputs] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((tuple(args), _drop_cache(kwargs)))
        raise _StopForward

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, (args, kwargs) in enumerate(inputs):
            before = len(captured)
            try:
                call_model(model, args, kwargs, f"calibration item {i}")
            except _StopForward:
                pass
            if len(captured) == before:
                raise InitDataError(f"calibration item {i} ran the model without reaching its first block {prefix}.0")
    finally:
        handle.remove()
    return captured


def _collect(block: nn.Module, prefix: str, inputs: list[ModelInputs], modules: Mapping[str, nn.Module],
             needs: Needs) -> InputHooks:
    """Run ``block`` on every input with hooks on ``modules``; the filled hooks."""
    hooks = InputHooks(modules, needs)
    with hooks.attached():
        for i, (args, kwargs) in enumerate(inputs):
            _run(block, prefix, args, kwargs, i)
            hooks.sample_done(batch_size(args, kwargs))
    missing = [n for n in modules if n not in hooks.collectors and n not in hooks.owner]
    if missing:
        raise InitDataError(f"the calibration samples never ran these layers: {', '.join(missing)}")
    return hooks


def _run(block: nn.Module, prefix: str, args: tuple[Any, ...], kwargs: dict[str, Any], i: int) -> Any:
    return call_model(block, args, kwargs, f"calibration item {i} in block {prefix or 'model'}")


def _next_inputs(block: nn.Module, prefix: str, inputs: list[ModelInputs]) -> list[ModelInputs]:
    """Each input with its hidden states replaced by ``block``'s output (other arguments kept)."""
    out: list[ModelInputs] = []
    for i, (args, kwargs) in enumerate(inputs):
        y = _run(block, prefix, args, kwargs, i)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if not isinstance(y, Tensor):
            raise InvalidArgumentError(
                f"block {prefix} returned {type(y).__name__}; data-aware compression needs a tensor or a tuple starting with one"
            )
        if args:
            out.append(((y, *args[1:]), kwargs))
        elif "hidden_states" in kwargs:
            out.append(((), {**kwargs, "hidden_states": y}))
        else:
            raise InvalidArgumentError(f"block {prefix}.0 takes no positional input nor hidden_states; cannot chain blocks")
    return out
