"""Config builders shared by the algorithm tests."""

from __future__ import annotations

from typing import Any

import nncompress as nnc


def sparsity_config(params: dict[str, Any] | None = None, sample_size: tuple[int, ...] = (2, 1, 8, 8),
                    **section: Any) -> nnc.CompressionConfig:
    """An NNCF 2.x magnitude sparsity config; ``sparsity_init`` moves to the section level, as NNCF wants."""
    params = dict(params or {})
    if "sparsity_init" in params:
        section["sparsity_init"] = params.pop("sparsity_init")
    return nnc.CompressionConfig.from_dict(
        {
            "input_info": {"sample_size": list(sample_size)},
            "compression": {"algorithm": "magnitude_sparsity", "params": params, **section},
        }
    )
