"""Quantization-aware training: builder and controller of ``"algorithm": "quantization"``.

Config (NNCF 2.x)::

    {"algorithm": "quantization",
     "preset": "performance",
     "weights": {"bits": 8, "per_channel": true},
     "activations": {"bits": 8, "mode": "symmetric"},
     "initializer": {"range": {"num_init_samples": 256, "type": "mean_min_max"},
                     "batchnorm_adaptation": {"num_bn_adaptation_samples": 256}},
     "params": {"weights_quant_start_epoch": 0, "activations_quant_start_epoch": 1}}

Export (``ctrl.export_model``) strips a copy to PyTorch-native fake quantization with the
weights on their grid, folds every BatchNorm into the conv before it (scaling that conv's
per-channel weight steps), and writes ONNX QuantizeLinear/DequantizeLinear pairs that
onnxruntime fuses into QLinearConv / QLinearMatMul.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import nn

from nncompress.api.compression import CompressionStage, StripFormat
from nncompress.api.statistics import CompressionStatistics
from nncompress.config import AlgorithmSection
from nncompress.errors import CompressionStateError, InitDataError
from nncompress.graph.capture import CapturedGraph
from nncompress.graph.layout import InsertionCommand, Priority, TargetType, TransformationLayout
from nncompress.torch.bn_folding import fold_batchnorms
from nncompress.torch.bn_modes import batch_statistics
from nncompress.torch.calibration import forward_batches
from nncompress.torch.runtime import get_runtime

from ..base import BaseBuilder, BaseController
from ..state_fields import state_field, state_mapping
from .hawq import HawqChoice, choose_hawq_bits
from .params import MAX_BITS, MIN_BITS, QuantizationParams
from .placement import PlacementRules, QuantizerPlacement, feeds_inplace_op, place_quantizers
from .precision import manual_bits, quantizer_ids, ratio_of, report_bits
from .quantizers import FakeQuantizer, NativeFakeQuantize
from .scheduler import DEFAULT_START_EPOCH, QuantizationScheduler
from .statistics import QuantizationStatistics


class QuantizationBuilder(BaseBuilder):
    """Places fake quantizers on weights and activations and initialises their ranges."""

    algorithm = "quantization"
    priority = Priority.QUANTIZATION
    bn_adaptation_by_default = True

    def __init__(self, section: AlgorithmSection, context: Any, rules: PlacementRules | None = None) -> None:
        super().__init__(section, context)
        self.params = QuantizationParams.from_section(section)
        self.rules = rules
        self._quantizers: list[FakeQuantizer] = []
        self.placements: list[QuantizerPlacement] = []
        self.weight_of: dict[int, str] = {}  # id of a weight quantizer -> qualified name of its weight
        self.precision: dict[str, int] | None = None  # mixed precision: NNCF quantizer id -> bits
        self.hawq: HawqChoice | None = None
        self.precision_ratio: float | None = None

    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        graph = self._context.graph_for(model)
        placements, self.report = place_quantizers(graph, self._section, self.params, self.rules)
        placements = self._with_precision(model, graph, placements)
        self.placements = placements
        owner_only = graph.owner_only_weights()
        consumers = graph.consumers()
        layout = TransformationLayout()
        self._quantizers = []
        self.weight_of = {}
        for p in placements:
            name = p.point.target if p.point.target_type is not TargetType.WEIGHT else p.consumers[0]
            q = FakeQuantizer(p.params, name, p.group, p.channel_axis, p.num_channels)
            q.copy_output = feeds_inplace_op(graph, p, consumers)
            q.set_lr_multiplier(self.params.lr_multiplier)
            weight_name = f"{p.point.target}.{p.point.param}".lstrip(".")
            # embedding tables go through the hook mode, which quantizes only the rows looked up
            reads_rows = graph.nodes[p.consumers[0]].op == "embedding" if p.consumers else False
            local = p.point.target_type is TargetType.WEIGHT and weight_name in owner_only and not reads_rows
            layout.register(InsertionCommand(p.point, q, self.algorithm, Priority.QUANTIZATION, local))
            self._quantizers.append(q)
            if p.point.target_type is TargetType.WEIGHT:
                self.weight_of[id(q)] = weight_name
        return layout

    def _with_precision(self, model: nn.Module, graph: CapturedGraph,
                        placements: list[QuantizerPlacement]) -> list[QuantizerPlacement]:
        """The placements at the bits ``initializer.precision`` gives: saved in a resumed state,
        from ``bitwidth_per_scope`` (manual) or chosen by HAWQ on ``init_data``."""
        precision = self.params.precision
        if precision is None:
            return placements
        names = quantizer_ids(graph, placements)
        ids = [q.id for q in names]
        saved = self._loaded_state.get("precision") if self._loaded_state is not None else None
        if saved is not None:
            bits = _saved_bits(saved["bits"], ids, f"builder_state.{self.algorithm}.precision.bits")
        elif precision.type == "manual":
            chosen = manual_bits(precision, names)
            bits = [chosen.get(i, p.params.bits) for i, p in enumerate(placements)]
        else:
            self.hawq = choose_hawq_bits(model, graph, placements, self.params, precision, self._context.init_data)
            bits = self.hawq.bits
        self.precision = dict(zip(ids, bits))
        placements = [p if b == p.params.bits else replace(p, params=self.params.with_bits(p.params, p.group, b))
                      for p, b in zip(placements, bits)]
        self.precision_ratio = ratio_of(graph, placements)
        report_bits(self.report, graph, placements)
        return placements

    def _extra_state(self) -> dict[str, Any]:
        if self.precision is None:
            return {}
        return {"precision": {"type": self.params.precision.type if self.params.precision else "manual",
                              "bits": dict(self.precision)}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from a saved builder state; with ``initializer.precision`` the saved bits are
        used as they are (HAWQ does not run again).

        :raises CompressionStateError: for another config, or a missing or bad ``precision`` entry.
        """
        if self.params.precision is not None:
            where = f"builder_state.{self.algorithm}"
            entry = state_mapping(state_field(state, "precision", where), f"{where}.precision")
            bits = state_mapping(state_field(entry, "bits", f"{where}.precision"), f"{where}.precision.bits")
            for key, value in bits.items():
                if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
                    raise CompressionStateError(f"{where}.precision.bits[{key!r}]: expected bits {MIN_BITS}..{MAX_BITS}, "
                                                f"got {value!r}")
        super().load_state(state)

    def build_controller(self, model: nn.Module) -> QuantizationController:
        """:return: the controller (staged scheduler when ``params`` sets start epochs)."""
        return QuantizationController(model, self, self._quantizers, self.params)

    def initialize(self, model: nn.Module) -> None:
        """Range initialisation from ``init_data``, then BatchNorm adaptation (by default, as in
        NNCF 2.x, whenever ``init_data`` is given: see :meth:`BaseBuilder.initialize`)."""
        self.init_ranges(model, self._quantizers)  # all, as NNCF: a staged group starts from them too
        super().initialize(model)

    def reinit_ranges(self, model: nn.Module, quantizers: list[FakeQuantizer]) -> None:
        """A staged group switching on: its ranges again from ``init_data``; without it (a run
        resumed from a checkpoint without ``init_data``) they stay as they are, with a warning."""
        if self._context.init_data is None:
            warnings.warn(
                f"{len(quantizers)} quantizers switched on without init_data to initialise their ranges "
                "again (as NNCF 2.x's staged schedule does); they keep their saved ranges. Pass init_data "
                "to create_compressed_model when resuming to re-initialise them",
                UserWarning,
                stacklevel=4,
            )
            return
        self.init_ranges(model, quantizers)

    def init_ranges(self, model: nn.Module, quantizers: list[FakeQuantizer]) -> None:
        """Initialise the ranges of ``quantizers`` as the config says: weights from the weights,
        activations from ``init_data`` (see :func:`~nncompress.torch.bn_modes.batch_statistics`).

        :param model: the compressed model.
        :param quantizers: which quantizers (all at creation; a group switching on later).
        :raises InitDataError: without ``init_data`` when activations need it, or if it does not fit.
        """
        pending = []
        for q in quantizers:
            r = self.params.range_init_for(q.name, q.group)
            if r is None or r.num_init_samples <= 0:
                continue
            q.start_collecting(r.type_for(q.group), r.min_percentile, r.max_percentile)
            if id(q) in self.weight_of:  # a weight is the same in every batch: its statistics once
                q(model.get_parameter(self.weight_of[id(q)]).detach())
                q.finish_collecting()
            else:
                pending.append((q, r.num_init_samples))
        if not pending:
            return
        data = self._context.init_data
        if data is None:
            for q, _ in pending:
                q.finish_collecting()
            raise InitDataError(
                f"{self._section.json_path}.initializer.range: activation range initialisation needs "
                "init_data (pass it to create_compressed_model or register_default_init_args), or set "
                '"initializer": {"range": {"num_init_samples": 0}} to take ranges from the first batch'
            )
        with batch_statistics(model):
            try:
                forward_batches(model, data, max(n for _, n in pending), "Range initialisation")
            except BaseException:
                for q, _ in pending:  # stop collecting; the failure's own error is the one to see
                    q.abort_collecting()
                raise
        for q, _ in pending:
            q.finish_collecting()


class QuantizationController(BaseController):
    """Handle to the fake quantizers: staged schedule, statistics, export to INT8 ONNX.

    :param model: the compressed model.
    :param builder: its builder.
    :param quantizers: every inserted fake quantizer.
    :param params: the typed config.
    """

    export_strip_format = StripFormat.NATIVE

    def __init__(
        self, model: nn.Module, builder: QuantizationBuilder, quantizers: list[FakeQuantizer], params: QuantizationParams
    ) -> None:
        super().__init__(model, builder)
        self.quantizers = quantizers
        self.params = params
        self.precision_ids = list(builder.precision) if builder.precision is not None else None
        self.precision_ratio = builder.precision_ratio
        self.hawq = builder.hawq  # HAWQ's traces, noise and choice (None when not run now)
        staged = "params" in builder.section.section
        default = DEFAULT_START_EPOCH if staged else 0
        w_start, a_start = params.weights_quant_start_epoch, params.activations_quant_start_epoch
        self._scheduler = QuantizationScheduler(
            quantizers,
            w_start if w_start is not None else default,
            a_start if a_start is not None else default,
            reinitialize=lambda qs: builder.reinit_ranges(model, qs),
        )

    @property
    def compression_rate(self) -> float:
        """Share of the quantizers that are on."""
        return sum(q.enabled for q in self.quantizers) / len(self.quantizers) if self.quantizers else 0.0

    @property
    def maximal_compression_rate(self) -> float:
        """1.0: every quantizer on."""
        return 1.0

    def compression_stage(self) -> CompressionStage:
        """UNCOMPRESSED with no quantizer on, FULLY with all on, PARTIALLY in between."""
        on = sum(q.enabled for q in self.quantizers)
        if on == 0:
            return CompressionStage.UNCOMPRESSED
        return CompressionStage.FULLY_COMPRESSED if on == len(self.quantizers) else CompressionStage.PARTIALLY_COMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """Quantizer counts and shares, placement and bit widths."""
        stats = QuantizationStatistics.of(self.quantizers, len(self.capture_report.compressed),
                                          len(self.capture_report.rows), self.precision_ids, self.precision_ratio)
        result = CompressionStatistics()
        result.register(self.name, stats)
        return result

    def prepare_export_copy(self, model: nn.Module) -> None:
        """Fold BatchNorms into convs of the stripped copy and scale their weight quantizers."""
        pairs = fold_batchnorms(model, self._context.graph_for(self.model))
        rt = get_runtime(model)
        if rt is None or self.name not in rt._modules:
            return
        group = rt.group(self.name)
        for pair in pairs:
            if pair.batchnorm_op in rt.post_points:  # the BatchNorm op is gone: quantize the conv output
                rt.post_points[pair.conv_op] = rt.post_points.pop(pair.batchnorm_op)
            native = group._modules.get("weight:" + f"{pair.conv}.weight".lstrip(".").replace(".", "/"))
            if isinstance(native, NativeFakeQuantize):
                native.set_channel_scale(pair.factor)


def _saved_bits(saved: Mapping[str, int], ids: list[str], where: str) -> list[int]:
    """The saved bit of every quantizer id, in placement order.

    :raises CompressionStateError: when the saved ids are not this model's quantizers.
    """
    if set(saved) != set(ids):
        differ = sorted(set(saved) ^ set(ids))[:3]
        raise CompressionStateError(f"{where}: the compression_state was saved for a model with other quantizers "
                                    f"({len(saved)} saved, {len(ids)} now; differing, e.g.: {differ})")
    return [int(saved[i]) for i in ids]
