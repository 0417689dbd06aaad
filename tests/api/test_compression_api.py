"""The API matches the spec: every class, method and property, with the documented parameters."""

from __future__ import annotations

import inspect
import itertools
import re

import pytest

import nncompress.api.compression as api
from nncompress.api.compression import CompressionStage, StripFormat
from tests.conftest import SHARED, require_shared

SPEC = SHARED / "spec" / "000_c49751db0b90cfbf.txt"
require_shared(SPEC, "the API spec")

U, P, F = (
    CompressionStage.UNCOMPRESSED,
    CompressionStage.PARTIALLY_COMPRESSED,
    CompressionStage.FULLY_COMPRESSED,
)


def _spec_members() -> list[tuple[str, str, str, list[str]]]:
    """(class, kind, name, parameter names) for every member the spec documents."""
    members = []
    cls = None
    for line in SPEC.read_text().splitlines():
        m = re.match(r"\.\. py:class:: (\w+)", line)
        if m:
            cls = m.group(1)
            continue
        m = re.match(r"\s+\.\. py:(method|property):: (\w+)(?:\((.*)\))?", line)
        if m and cls:
            params = [p.split("=")[0].strip() for p in (m.group(3) or "").split(",") if p.strip()]
            members.append((cls, m.group(1), m.group(2), params))
    return members


def test_spec_parsed_every_class() -> None:
    classes = {c for c, *_ in _spec_members()}
    assert classes == {
        "CompressionLoss",
        "CompressionScheduler",
        "CompressionStage",
        "CompressionAlgorithmController",
        "CompressionAlgorithmBuilder",
    }


@pytest.mark.parametrize("cls,kind,name,params", _spec_members())
def test_member_exists_with_spec_signature(cls: str, kind: str, name: str, params: list[str]) -> None:
    klass = getattr(api, cls)
    member = inspect.getattr_static(klass, name)
    if kind == "property":
        assert isinstance(member, property), f"{cls}.{name} should be a property"
        return
    sig = inspect.signature(getattr(klass, name))
    ours = [p.name for p in sig.parameters.values() if p.name != "self"]
    expected = [p.lstrip("*") for p in params]
    assert ours == expected, f"{cls}.{name}{sig} differs from spec {params}"


TABLE = {
    (U, U): U, (P, P): P, (F, F): F,
    (U, P): P, (U, F): P, (P, F): P,
}  # fmt: skip


@pytest.mark.parametrize("a,b", list(itertools.product([U, P, F], repeat=2)))
def test_stage_addition_table_is_symmetric_and_exact(a: CompressionStage, b: CompressionStage) -> None:
    expected = TABLE.get((a, b), TABLE.get((b, a)))
    assert a + b == expected
    assert isinstance(a + b, CompressionStage)


def test_strip_formats() -> None:
    assert {f.name for f in StripFormat} == {"NATIVE", "DQ", "IN_PLACE"}


def test_abstract_classes_cannot_be_instantiated() -> None:
    for cls in (api.CompressionLoss, api.CompressionScheduler, api.CompressionAlgorithmBuilder):
        with pytest.raises(TypeError):
            cls()  # type: ignore[abstract]


def test_loss_call_is_calculate() -> None:
    class Loss(api.CompressionLoss):
        def calculate(self, *args: object, **kwargs: object) -> float:
            return 3.0 + len(args)

        def load_state(self, state: dict) -> None:
            pass

        def get_state(self) -> dict:
            return {}

    assert Loss()(1, 2) == Loss().calculate(1, 2) == 5.0
