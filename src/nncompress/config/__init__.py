"""NNCF 2.x JSON configs: schema, validation and :class:`CompressionConfig`."""

from nncompress.config.config import BUILT_ALGORITHMS, AlgorithmSection, CompressionConfig, InputInfo

__all__ = ["BUILT_ALGORITHMS", "AlgorithmSection", "CompressionConfig", "InputInfo"]
