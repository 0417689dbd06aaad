"""Which layers ``compress_weights`` compresses, and to which format.

A *plan* maps each weighted layer (``nn.Linear``, ``nn.Embedding``) to a
:class:`~nncompress.functional.weight_quant.WeightQuantSpec` or ``None`` (left in float), with the
reason for every choice, so the summary can say why a layer is where it is.

Rules, as NNCF 3.x:

* embeddings and the output layer (``get_output_embeddings()`` or the last ``nn.Linear``) take the
  backup mode (INT8, per channel) unless ``all_layers`` (for the output layer; an embedding stays
  per-row INT8, the format its gather kernel reads);
* with a 4-bit mode, ``ratio`` of the remaining layers' weights (by count of parameters) takes the
  4-bit mode and the rest the backup mode; the layers kept in the backup mode are those with the
  highest sensitivity (see :mod:`nncompress.weight_compression.sensitivity`);
* a layer whose input size ``group_size`` does not divide takes a shorter last group (``ragged``),
  the backup mode (``ignore``) or stops everything (``error``);
* ``ignored_scope`` layers stay float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from torch import Tensor, nn

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import WeightQuantSpec
from nncompress.graph.capture import OpNode
from nncompress.ptq.params import IgnoredScope
from nncompress.weight_compression.params import BackupMode, CompressWeightsMode, GroupSizeFallbackMode


@dataclass
class LayerEntry:
    """One weighted layer of the model.

    :param name: qualified module name (``model.layers.0.mlp.down_proj``).
    :param module: the ``nn.Linear`` or ``nn.Embedding``.
    :param kind: ``"linear"`` or ``"embedding"``.
    :param tied: names of other layers that hold the very same weight tensor.
    :param spec: the chosen format, ``None`` for float.
    :param reason: why that format.
    """

    name: str
    module: nn.Module
    kind: str
    tied: list[str] = field(default_factory=list)
    spec: WeightQuantSpec | None = None
    reason: str = ""

    @property
    def weight(self) -> Tensor:
        """The layer's ``[N, K]`` weight."""
        return cast(Tensor, self.module.weight)

    @property
    def bias(self) -> Tensor | None:
        """The layer's bias (linears), ``None`` if it has none."""
        bias = getattr(self.module, "bias", None)
        return bias.detach() if isinstance(bias, Tensor) else None

    @property
    def numel(self) -> int:
        """Number of weight elements."""
        return int(self.weight.numel())

    @property
    def in_features(self) -> int:
        """Input size ``K`` of the weight as stored ``[N, K]``."""
        return int(self.weight.shape[1])


def weighted_layers(model: nn.Module) -> list[LayerEntry]:
    """Every ``nn.Linear`` / ``nn.Embedding`` with a 2-D float weight, in registration order."""
    entries: list[LayerEntry] = []
    owners: dict[int, LayerEntry] = {}
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, nn.Embedding):
            continue
        if module.weight.dim() != 2 or not module.weight.is_floating_point():
            continue
        entry = LayerEntry(name, module, "linear" if isinstance(module, nn.Linear) else "embedding")
        first = owners.setdefault(id(module.weight), entry)
        if first is not entry:
            first.tied.append(name)
            entry.tied.append(first.name)
        entries.append(entry)
    return entries


def output_layer_name(model: nn.Module, entries: list[LayerEntry]) -> str | None:
    """The output layer: ``get_output_embeddings()`` for Hugging Face models, else the last linear."""
    getter: Callable[[], nn.Module | None] | None = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        head = getter()
        for e in entries:
            if e.module is head:
                return e.name
    linears = [e.name for e in entries if e.kind == "linear"]
    return linears[-1] if linears else None


def as_nodes(entries: list[LayerEntry]) -> list[OpNode]:
    """The layers as graph nodes, so :class:`IgnoredScope` matches names, patterns and types."""
    return [OpNode(name=e.name, op=e.kind, scope=e.name, module=e.name, module_type=type(e.module).__name__)
            for e in entries]


@dataclass(frozen=True)
class PlanOptions:
    """The user's choices that shape the plan (already validated)."""

    mode: CompressWeightsMode
    group_size: int
    ratio: float
    all_layers: bool
    backup_mode: BackupMode
    fallback: GroupSizeFallbackMode
    ignored_scope: IgnoredScope | None

    def primary(self) -> WeightQuantSpec:
        """The spec of the primary mode."""
        return WeightQuantSpec.from_mode(self.mode.spec_mode, self.group_size if self.mode.is_4bit else -1)

    def backup(self) -> WeightQuantSpec | None:
        """The spec of the backup mode (per channel), ``None`` for ``BackupMode.NONE``."""
        if self.backup_mode is BackupMode.NONE:
            return None
        return WeightQuantSpec.from_mode(self.backup_mode.value, -1)


def initial_plan(model: nn.Module, entries: list[LayerEntry], opts: PlanOptions) -> list[LayerEntry]:
    """Assign every layer its format except the ratio split; return the ratio candidates.

    Candidates get the primary spec for now; :func:`apply_ratio` moves some to the backup mode.
    """
    ignored = opts.ignored_scope
    if ignored is not None:
        ignored.check(as_nodes(entries))  # type: ignore[arg-type]
    head = output_layer_name(model, entries)
    tied_to_head = {n for e in entries if e.name == head for n in e.tied}
    candidates: list[LayerEntry] = []
    for entry, node in zip(entries, as_nodes(entries)):
        why = ignored.reason(node) if ignored is not None else None
        if why is not None:
            entry.spec, entry.reason = None, f"float: {why}"
        elif entry.kind == "embedding" or ((entry.name == head or entry.name in tied_to_head) and not opts.all_layers):
            role = "embedding" if entry.kind == "embedding" else "output layer"
            entry.spec, entry.reason = opts.backup(), f"backup mode: {role}"
        elif not opts.mode.is_4bit:
            entry.spec, entry.reason = opts.primary(), "mode"
        else:
            _plan_4bit(entry, opts, candidates)
    _untie_mismatches(entries)
    return candidates


def _plan_4bit(entry: LayerEntry, opts: PlanOptions, candidates: list[LayerEntry]) -> None:
    spec = opts.primary()
    if spec.group_size != -1 and entry.in_features % spec.group_size:
        message = f"input size {entry.in_features} is not a multiple of group_size {spec.group_size}"
        if opts.fallback is GroupSizeFallbackMode.ERROR:
            raise InvalidArgumentError(
                f"layer {entry.name!r}: {message}; choose a group_size that divides it, or "
                "group_size_fallback_mode 'ragged' (shorter last group) or 'ignore' (backup mode)"
            )
        if opts.fallback is GroupSizeFallbackMode.IGNORE:
            entry.spec, entry.reason = opts.backup(), f"backup mode: {message}"
            return
    entry.spec, entry.reason = spec, "primary mode"
    candidates.append(entry)


def _untie_mismatches(entries: list[LayerEntry]) -> None:
    """Tied layers share one compressed tensor: all of them take the format of the first one."""
    by_name = {e.name: e for e in entries}
    for e in entries:
        for other in e.tied:
            first = by_name[other]
            if entries.index(first) < entries.index(e) and (first.spec, first.reason) != (e.spec, e.reason):
                e.spec, e.reason = first.spec, f"{first.reason} (tied to {first.name})"


def apply_ratio(candidates: list[LayerEntry], ratio: float, scores: dict[str, float],
                backup: WeightQuantSpec | None) -> None:
    """Move the most sensitive candidates to the backup mode until ``ratio`` of the weights stays 4-bit.

    Candidates are taken in decreasing ``scores`` order while the backup share of parameters is
    below ``1 - ratio`` (the layer that crosses the target is taken when that leaves the 4-bit share
    closer to ``ratio``).
    """
    total = sum(e.numel for e in candidates)
    budget = (1.0 - ratio) * total
    taken = 0
    for entry in sorted(candidates, key=lambda e: (-scores[e.name], e.name)):
        if taken >= budget:
            break
        if abs(budget - (taken + entry.numel)) > abs(budget - taken):
            continue
        taken += entry.numel
        entry.spec, entry.reason = backup, f"backup mode: sensitivity {scores[entry.name]:.3g} (ratio {ratio:g})"


def iter_compressed(entries: list[LayerEntry]) -> Iterator[LayerEntry]:
    """Layers that get a compressed format, tied duplicates once (the first holder)."""
    seen: set[str] = set()
    for e in entries:
        if e.spec is None or any(t in seen for t in e.tied):
            seen.add(e.name)
            continue
        seen.add(e.name)
        yield e
