"""Dataset, IgnoredScope, the option enums and AdvancedQuantizationParameters."""

from __future__ import annotations

import pytest
import torch

import nncompress as nnc
from nncompress.errors import InvalidArgumentError, ScopeMatchError
from nncompress.graph.capture import capture
from tests.model_zoo import ResidualCNN


def test_dataset_transforms_items_and_selects_indices() -> None:
    ds = nnc.Dataset([(1, "a"), (2, "b"), (3, "c")], transform_fn=lambda item: item[0] * 10)
    assert list(ds.get_inference_data()) == [10, 20, 30]
    assert list(ds.get_inference_data([2, 0])) == [10, 30]
    assert list(ds.get_data([1])) == [(2, "b")]
    assert ds.get_length() == 3 and ds.get_batch_size() is None


def test_dataset_reports_a_data_loader_batch_size() -> None:
    loader = torch.utils.data.DataLoader(torch.arange(10.0), batch_size=4)
    ds = nnc.Dataset(loader)
    assert ds.get_batch_size() == 4 and ds.get_length() == 3


def test_dataset_refuses_non_iterables_and_non_callables() -> None:
    with pytest.raises(InvalidArgumentError, match="data_source must be iterable"):
        nnc.Dataset(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="transform_fn must be callable"):
        nnc.Dataset([1], transform_fn="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(("enum", "value", "member"), [
    (nnc.QuantizationPreset, "MIXED", nnc.QuantizationPreset.MIXED),
    (nnc.QuantizationPreset, "performance", nnc.QuantizationPreset.PERFORMANCE),
    (nnc.ModelType, "transformer", nnc.ModelType.TRANSFORMER),
    (nnc.TargetDevice, "CPU", nnc.TargetDevice.CPU),
    (nnc.TargetDevice, nnc.TargetDevice.ANY, nnc.TargetDevice.ANY),
])
def test_options_parse_names_values_and_members(enum, value, member) -> None:  # type: ignore[no-untyped-def]
    assert enum.parse(value, "x") is member


def test_unknown_option_names_what_is_allowed() -> None:
    with pytest.raises(InvalidArgumentError, match=r"preset must be one of \['performance', 'mixed'\].*'fast'"):
        nnc.QuantizationPreset.parse("fast", "preset")


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    return capture(ResidualCNN(), (torch.randn(2, 1, 8, 8),), {})


def test_ignored_scope_matches_names_modules_patterns_and_types(graph) -> None:  # type: ignore[no-untyped-def]
    fc = next(n for n in graph if n.op == "linear")
    dw = next(n for n in graph if n.module == "blocks.0.dw")
    assert nnc.IgnoredScope(names=[fc.name]).reason(fc) == "in ignored_scope.names"
    assert nnc.IgnoredScope(names=["fc"]).reason(fc) == "in ignored_scope.names"
    assert nnc.IgnoredScope(patterns=[r"blocks\.\d\.dw"]).reason(dw) is not None
    assert nnc.IgnoredScope(patterns=[r"blocks\.\d\.dw"]).reason(fc) is None
    assert nnc.IgnoredScope(types=["linear"]).reason(fc) is not None
    assert nnc.IgnoredScope(types=["Linear"]).reason(fc) is not None
    assert nnc.IgnoredScope(types=["Linear"]).reason(dw) is None
    nnc.IgnoredScope(names=["fc"], patterns=[".*dw.*"], types=["conv2d"]).check(graph)


@pytest.mark.parametrize(("scope", "key"), [
    (nnc.IgnoredScope(names=["classifier"]), "names"),
    (nnc.IgnoredScope(patterns=["head.*"]), "patterns"),
    (nnc.IgnoredScope(types=["LayerNorm"]), "types"),
])
def test_ignored_scope_rules_that_match_nothing_raise(graph, scope, key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ScopeMatchError, match=f"ignored_scope.{key}.*matches no operation"):
        scope.check(graph)
    nnc.IgnoredScope(names=scope.names, patterns=scope.patterns, types=scope.types, validate=False).check(graph)


def test_ignored_scope_refuses_bad_rules() -> None:
    with pytest.raises(InvalidArgumentError, match="list of strings"):
        nnc.IgnoredScope(names="fc")
    with pytest.raises(InvalidArgumentError, match="not a regular expression"):
        nnc.IgnoredScope(patterns=["(unclosed"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"activations_range_estimator": "threesigma"}, "activations_range_estimator must be one of"),
    ({"min_percentile": 60.0, "max_percentile": 40.0}, "percentiles must satisfy"),
    ({"smooth_quant_alpha": 1.5}, r"smooth_quant_alpha must be in \[0, 1\]"),
])
def test_advanced_parameters_are_checked(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=match):
        nnc.AdvancedQuantizationParameters(**kwargs)
