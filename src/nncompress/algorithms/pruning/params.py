"""The typed ``filter_pruning`` section, with NNCF 2.x defaults and the checks the schema cannot do."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from nncompress.config import AlgorithmSection
from nncompress.errors import ConfigError, UnsupportedAlgorithmError
from nncompress.functional import importance as fi
from nncompress.functional import pruning_schedules as fps

_PARAM_KEYS = ("schedule", "pruning_target", "pruning_flops_target", "pruning_steps", "num_init_steps",
               "filter_importance", "interlayer_ranking_type", "all_weights", "prune_first_conv",
               "prune_downsample_convs", "prune_batch_norms", "zero_grad", "channel_multiple")

DEFAULT_CHANNEL_MULTIPLE = 16
"""Kept channels are rounded up to a multiple of 16 by default: onnxruntime's CPU convolutions run
in blocks of 16 channels (AVX-512), and a pruned ResNet with other widths ran *slower* than the dense
one in ``benchmarks/pruning.py`` (NNCF 2.x rounded to 8, for OpenVINO)."""


@dataclass(frozen=True)
class FilterPruningParams:
    """A ``filter_pruning`` section as typed values (defaults: NNCF 2.x's).

    :param pruning_init: level set when the model is compressed (section key, not in ``params``).
    :param schedule: ``"exponential"``, ``"exponential_with_bias"`` or ``"baseline"``.
    :param pruning_target: share of filters to remove (per group, or of all filters with ``all_weights``).
    :param pruning_flops_target: share of the model's FLOPs to remove instead; ``None`` if not set.
    :param pruning_steps: epochs from ``pruning_init`` to the target.
    :param num_init_steps: epochs of unpruned training first.
    :param filter_importance: ``"L2"``, ``"L1"`` or ``"geometric_median"``.
    :param interlayer_ranking_type: ``"unweighted_ranking"`` (``"learned_ranking"`` is refused).
    :param all_weights: rank the filters of all groups together (weights normalised per layer).
    :param prune_first_conv: also prune groups whose convolution reads a model input.
    :param prune_downsample_convs: also prune groups produced by a convolution with stride > 1.
    :param prune_batch_norms: mask the BatchNorm channels that follow pruned filters too.
    :param zero_grad: pruned filters get zero gradients (``False``: the gradient passes the mask).
    :param channel_multiple: channels kept per group are rounded up to a multiple of this (a group
        of at most this many channels is not pruned); 1 keeps the exact count a level gives.
    """

    pruning_init: float = fps.DEFAULT_PRUNING_INIT
    schedule: str = fps.DEFAULT_PRUNING_SCHEDULE
    pruning_target: float = fps.DEFAULT_PRUNING_TARGET
    pruning_flops_target: float | None = None
    pruning_steps: int = fps.DEFAULT_PRUNING_STEPS
    num_init_steps: int = fps.DEFAULT_NUM_INIT_STEPS
    filter_importance: str = fi.DEFAULT_FILTER_IMPORTANCE
    interlayer_ranking_type: str = "unweighted_ranking"
    all_weights: bool = False
    prune_first_conv: bool = False
    prune_downsample_convs: bool = False
    prune_batch_norms: bool = True
    zero_grad: bool = True
    channel_multiple: int = DEFAULT_CHANNEL_MULTIPLE

    @property
    def prune_flops(self) -> bool:
        """Whether the level is a share of FLOPs (``pruning_flops_target`` set)."""
        return self.pruning_flops_target is not None

    @property
    def target_level(self) -> float:
        """The level the schedule ends at: ``pruning_flops_target`` if set, else ``pruning_target``."""
        return self.pruning_flops_target if self.pruning_flops_target is not None else self.pruning_target

    @property
    def freeze_epoch(self) -> int:
        """First epoch whose masks stay frozen."""
        return fps.pruning_freeze_epoch(self.schedule, self.num_init_steps, self.pruning_steps)

    @classmethod
    def from_section(cls, section: AlgorithmSection) -> FilterPruningParams:
        """Read a schema-validated section and check what the schema cannot.

        :raises ConfigError: both targets set, a schedule that cannot reach its target.
        :raises UnsupportedAlgorithmError: for ``interlayer_ranking_type: learned_ranking`` (LeGR).
        """
        params = section.params
        where = f"{section.json_path}.params"
        if "pruning_target" in params and "pruning_flops_target" in params:
            raise ConfigError(f"{where}.pruning_flops_target", "set either pruning_target (a share of filters) or "
                              "pruning_flops_target (a share of FLOPs), not both", params["pruning_flops_target"])
        if params.get("interlayer_ranking_type") == "learned_ranking":
            raise UnsupportedAlgorithmError(
                f"{where}.interlayer_ranking_type",
                "'learned_ranking' (LeGR: an evolutionary search of per-layer ranking coefficients over many "
                "training runs) is not supported by nncompress; use 'unweighted_ranking' (the default) with "
                "\"all_weights\": true to rank the filters of all layers together",
                "learned_ranking",
            )
        for key in ("legr_params", "save_ranking_coeffs_path", "load_ranking_coeffs_path"):
            if key in params:
                warnings.warn(f"{where}.{key} applies to learned_ranking only and is ignored", stacklevel=2)
        values = {k: params[k] for k in _PARAM_KEYS if k in params}
        for key in ("pruning_steps", "num_init_steps", "channel_multiple"):
            if key in values:
                values[key] = int(values[key])
        result = cls(pruning_init=float(section.section.get("pruning_init", fps.DEFAULT_PRUNING_INIT)), **values)
        result._check_schedule(section.json_path)
        return result

    def _check_schedule(self, json_path: str) -> None:
        if self.schedule == "baseline":
            return
        if self.pruning_steps < 1:
            raise ConfigError(f"{json_path}.params.pruning_steps", f"the {self.schedule} schedule needs at least one "
                              "pruning epoch", self.pruning_steps)
        if self.pruning_init >= 1.0:
            raise ConfigError(f"{json_path}.pruning_init", "must be below 1 (1 would remove every filter)",
                              self.pruning_init)
        if self.schedule == "exponential_with_bias" and self.pruning_steps > 1 \
                and not self.pruning_init < 5.0 / 7.0 * self.target_level:
            raise ConfigError(
                f"{json_path}.pruning_init",
                f"the exponential_with_bias schedule needs pruning_init below 5/7 of the target "
                f"({self.target_level}); use the exponential schedule for this pruning_init",
                self.pruning_init,
            )
