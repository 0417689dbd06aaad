"""The builder table and the config's list of built algorithms agree."""

from nncompress.algorithms.registry import BUILDERS
from nncompress.config import BUILT_ALGORITHMS


def test_every_built_algorithm_has_a_builder() -> None:
    assert set(BUILDERS) == set(BUILT_ALGORITHMS)
