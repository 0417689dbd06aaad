"""Const sparsity: keep fixed masks while fine-tuning, as NNCF 2.x's ``const_sparsity``.

As NNCF, every mask starts all ones: the masks come from what is loaded afterwards. NNCF's
fine-tuning workflow works unchanged: train with ``magnitude_sparsity``, save the ``state_dict``,
create the model again with ``{"algorithm": "const_sparsity"}`` and load that ``state_dict``: the
magnitude masks (``nncompress.magnitude_sparsity.<point>.mask``) are loaded as the const masks.
A ``state_dict`` without masks (a stripped, already sparse model) gives each mask the non-zero
pattern of its loaded weight, so those zeros stay zero through training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncompress.api.compression import CompressionStage
from nncompress.graph.layout import Priority, TransformationLayout
from nncompress.torch.runtime import get_runtime

from ..base import BaseBuilder
from ..selection import select_weighted_ops
from .base import SPARSIFIABLE_OPS, BaseSparsityController, SparsifiedWeight, SparsityMask, mask_layout

_SOURCE_GROUPS = ("magnitude_sparsity",)  # algorithms whose saved masks a const model takes over


class ConstSparsityBuilder(BaseBuilder):
    """Masks every sparsifiable weight in scope with a fixed mask (all ones until loaded)."""

    algorithm = "const_sparsity"
    priority = Priority.SPARSIFICATION

    def _build_layout(self, model: nn.Module) -> TransformationLayout:
        graph = self._context.graph_for(model)
        nodes, self.report = select_weighted_ops(graph, self._section, SPARSIFIABLE_OPS)
        layout, self._weights = mask_layout(nodes, graph, model, self.algorithm)
        return layout

    def build_controller(self, model: nn.Module) -> ConstSparsityController:
        """:return: the controller (its scheduler never changes anything)."""
        return ConstSparsityController(model, self, self._weights)


class MaskLoader:
    """``load_state_dict`` hooks of the runtime module for const masks.

    Before loading, a missing const mask is taken from a saved magnitude mask of the same point;
    after loading, a const mask that was still missing is set to ``weight != 0`` of the weight
    just loaded (and no longer reported missing).

    :param model: the compressed model (to read the loaded weights).
    :param weights: point key to qualified weight name, for the const masks.
    """

    def __init__(self, model: nn.Module, weights: dict[str, str]) -> None:
        self.model = model
        self.weights = weights
        self._prefix = ""

    def pre(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Rename saved magnitude masks to the const keys they stand for."""
        self._prefix = prefix
        groups = module._modules
        for key in self.weights:
            target = f"{prefix}const_sparsity.{key}.mask"
            if target in state_dict:
                continue
            for group in _SOURCE_GROUPS:
                source = f"{prefix}{group}.{key}.mask"
                if source in state_dict:
                    own = groups.get(group)
                    keep = own is not None and key in own._modules  # this model has that mask too
                    state_dict[target] = state_dict[source] if keep else state_dict.pop(source)
                    break

    def post(self, module: nn.Module, incompatible: Any) -> None:
        """Set masks still missing from the loaded weights."""
        group = module._modules.get("const_sparsity")
        if group is None:
            return
        for key, weight_name in self.weights.items():
            target = f"{self._prefix}const_sparsity.{key}.mask"
            mask_module = group._modules.get(key)
            if target in incompatible.missing_keys and isinstance(mask_module, SparsityMask):
                mask = mask_module.mask
                with torch.no_grad():
                    mask.copy_((self.model.get_parameter(weight_name) != 0).to(mask.dtype))
                incompatible.missing_keys.remove(target)


class ConstSparsityController(BaseSparsityController):
    """Holds the fixed masks; always FULLY_COMPRESSED; the level cannot be set."""

    def __init__(self, model: nn.Module, builder: BaseBuilder, weights: list[SparsifiedWeight]) -> None:
        super().__init__(model, builder, weights)
        runtime = get_runtime(model)
        if runtime is not None and weights:
            key_of = {id(m): k for k, m in runtime.group(self.name).items()}
            loader = MaskLoader(model, {key_of[id(r.mask)]: r.weight for r in weights})
            runtime._register_load_state_dict_pre_hook(loader.pre, with_module=True)
            runtime.register_load_state_dict_post_hook(loader.post)

    def set_sparsity_level(self, level: float) -> None:
        """Does nothing, as NNCF 2.x: const masks do not follow a level."""

    def freeze(self, freeze: bool = True) -> None:
        """Does nothing: const masks never change."""

    def compression_stage(self) -> CompressionStage:
        """The masks are final from the start."""
        return CompressionStage.FULLY_COMPRESSED
