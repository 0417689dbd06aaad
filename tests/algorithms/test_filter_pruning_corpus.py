"""Every NNCF 2.x corpus config that uses filter_pruning builds on a ResNet-style model (small input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import nncompress as nnc
from nncompress.algorithms.registry import BUILDERS
from nncompress.demo.cnns import CifarResNet
from nncompress.errors import UnsupportedAlgorithmError
from tests.conftest import SHARED, require_shared

CORPUS = SHARED / "compat" / "nncf2-configs"
require_shared(CORPUS, "the NNCF 2.x config corpus")
PRUNING_CONFIGS = sorted(p for p in CORPUS.rglob("*.json") if '"filter_pruning"' in p.read_text(encoding="utf-8"))


def small(raw: dict[str, Any]) -> dict[str, Any]:
    """The config with a 16x16 input and scopes that name modules of NNCF's models not validated."""
    raw = {**raw, "input_info": {"sample_size": [2, 3, 16, 16]}}
    compression = raw["compression"] if isinstance(raw["compression"], list) else [raw["compression"]]
    raw["compression"] = [{**s, "validate_scopes": False} if "ignored_scopes" in s else s for s in compression]
    return raw


def test_the_corpus_has_them() -> None:
    assert len(PRUNING_CONFIGS) == 15


@pytest.mark.parametrize("path", PRUNING_CONFIGS, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_config_builds_and_prunes(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    config = nnc.CompressionConfig.from_dict(small(raw))
    torch.manual_seed(0)
    model = CifarResNet(num_classes=10, widths=(32, 64), blocks=1, in_channels=3)  # wide enough for multiples of 16
    sections = config.algorithm_sections()
    if any(s.algorithm not in BUILDERS for s in sections):
        pytest.skip(f"needs {[s.algorithm for s in sections if s.algorithm not in BUILDERS]}")
    pruning = next(s for s in sections if s.algorithm == "filter_pruning")
    if pruning.params.get("interlayer_ranking_type") == "learned_ranking":
        with pytest.raises(UnsupportedAlgorithmError, match="learned_ranking.*not supported"):
            nnc.create_compressed_model(model, config)
        return
    ctrl, compressed = nnc.create_compressed_model(model, config)
    ctrl.scheduler.epoch_step()
    compressed.eval()
    x = torch.randn(2, 3, 16, 16)
    out = compressed(x)
    stats = ctrl.statistics().filter_pruning
    assert stats.full_filters > 0  # NNCF's defaults: the middle convs of the blocks are pruned
    stripped = ctrl.strip(do_copy=True)
    assert type(stripped) is CifarResNet
    if stats.current_filters < stats.full_filters:
        torch.testing.assert_close(stripped(x), out, rtol=1e-4, atol=1e-4)
