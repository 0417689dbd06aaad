"""``CompressionConfig``: an NNCF 2.x JSON config, validated, with typed views of its parts.

Example::

    from nncompress.config import CompressionConfig

    config = CompressionConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 32, 32]},
        "compression": {"algorithm": "magnitude_sparsity",
                        "params": {"schedule": "multistep", "multistep_steps": [2],
                                   "multistep_sparsity_levels": [0.3, 0.5]}},
    })
    config.input_infos[0].shape          # (1, 3, 32, 32)
    config.algorithm_sections()[0].params["multistep_sparsity_levels"]   # [0.3, 0.5]
    config["compression"]["algorithm"]   # it is a dict, like NNCF's NNCFConfig
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nncompress.config.json_text import load_json_file
from nncompress.config.schema import INPUT_DTYPES, INPUT_FILLERS
from nncompress.config.validation import check_json_tree, validate_config
from nncompress.errors import ConfigError, InvalidArgumentError, UnsupportedAlgorithmError

PLANNED_ALGORITHMS: frozenset[str] = frozenset()
"""NNCF 2.x algorithms nncompress means to build; the others get "not planned" in their error."""

BUILT_ALGORITHMS: frozenset[str] = frozenset(
    {"magnitude_sparsity", "const_sparsity", "quantization", "knowledge_distillation", "rb_sparsity",
     "filter_pruning"}
)
"""NNCF 2.x algorithm names nncompress implements; other known names raise
:class:`~nncompress.errors.UnsupportedAlgorithmError`."""


@dataclass(frozen=True)
class InputInfo:
    """One model input described by ``input_info``: what nncompress feeds the model to trace it.

    :param shape: the tensor shape, batch dimension included (``sample_size`` in the JSON).
    :param dtype: the tensor data type: one of
        :data:`~nncompress.config.schema.INPUT_DTYPES` (``type`` in the JSON; NNCF 2.x used
        ``"float"`` and ``"long"``).
    :param keyword: pass the tensor to ``forward()`` as this keyword argument; ``None`` passes it
        positionally.
    :param filler: ``"zeros"``, ``"ones"`` or ``"random"``; ``None`` means the default (ones).
    :raises InvalidArgumentError: a field is outside what is allowed.
    """

    shape: tuple[int, ...]
    dtype: str = "float"
    keyword: str | None = None
    filler: str | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1 for dim in shape):
            raise InvalidArgumentError(f"InputInfo.shape must hold positive ints, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if self.dtype not in INPUT_DTYPES:
            raise InvalidArgumentError(
                f"InputInfo.dtype {self.dtype!r} is not allowed; expected one of: {', '.join(INPUT_DTYPES)}"
            )
        if self.filler is not None and self.filler not in INPUT_FILLERS:
            raise InvalidArgumentError(
                f"InputInfo.filler {self.filler!r} is not allowed; expected one of: {', '.join(INPUT_FILLERS)}"
            )


@dataclass(frozen=True)
class AlgorithmSection:
    """One section of ``compression``: an algorithm name and its settings.

    :param algorithm: the NNCF 2.x algorithm name, e.g. ``"magnitude_sparsity"``.
    :param section: the whole validated section (a copy: changing it does not change the config).
    :param json_path: where the section is in the config: ``"compression"`` for a single
        section, ``"compression[1]"`` inside a list. Error messages about the section start with it.
    """

    algorithm: str
    section: dict[str, Any] = field(hash=False)
    json_path: str

    @property
    def params(self) -> dict[str, Any]:
        """The section's ``params`` object (``{}`` if absent).

        :return: the parameters.
        """
        params: dict[str, Any] = self.section.get("params", {})
        return params

    @property
    def ignored_scopes(self) -> list[str]:
        """The section's ``ignored_scopes`` as a list (``[]`` if absent).

        :return: scopes; a ``{re}`` prefix marks a regular expression.
        """
        return _scope_list(self.section.get("ignored_scopes")) or []

    @property
    def target_scopes(self) -> list[str] | None:
        """The section's ``target_scopes`` as a list, or ``None`` if absent (every operation).

        :return: scopes; a ``{re}`` prefix marks a regular expression.
        """
        return _scope_list(self.section.get("target_scopes"))

    @property
    def validate_scopes(self) -> bool:
        """Whether every scope must match an operation of the model (``validate_scopes``, default true).

        :return: the flag.
        """
        return bool(self.section.get("validate_scopes", True))


def _scope_list(scopes: str | Sequence[str] | None) -> list[str] | None:
    """A scope setting (one string or a list) as a list, ``None`` kept."""
    if scopes is None:
        return None
    return [scopes] if isinstance(scopes, str) else list(scopes)


class CompressionConfig(dict[str, Any]):
    """An NNCF 2.x compression config: a ``dict`` of the JSON, plus typed accessors.

    Build it with :meth:`from_json` or :meth:`from_dict`, which validate it; the plain
    constructor copies a mapping without validating (call :meth:`validate` afterwards, e.g. after
    editing the dict). Top-level keys the schema does not know are kept.
    """

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> CompressionConfig:
        """Read and validate a JSON config file.

        ``//`` and ``/* */`` comments and trailing commas are allowed, as in NNCF 2.x.

        :param path: the file.
        :return: the validated config.
        :raises ConfigError: the file is not valid JSON, or the config is invalid (the message names
            the JSON path, the bad value and what is allowed).
        :raises UnknownAlgorithmError: a section names an algorithm NNCF 2.x never had.
        :raises UnsupportedAlgorithmError: a section names an NNCF 2.x algorithm nncompress does
            not implement.
        """
        data = load_json_file(path)
        if not isinstance(data, dict):
            raise ConfigError(
                "", f"{os.fspath(path)}: a config must be a JSON object, got {type(data).__name__}"
            )
        config = cls(data)
        config.validate()
        return config

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionConfig:
        """Validate a config given as a mapping; the mapping is deep-copied, not kept.

        :param data: the config.
        :return: the validated config.
        :raises ConfigError: the config is invalid.
        :raises UnknownAlgorithmError: a section names an algorithm NNCF 2.x never had.
        :raises UnsupportedAlgorithmError: a section names an NNCF 2.x algorithm nncompress does
            not implement.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("", f"a config must be a mapping, got {type(data).__name__}", data)
        check_json_tree(data)  # before the copy: deepcopy recurses, and fails on non-JSON objects
        config = cls(copy.deepcopy(dict(data)))
        config.validate()
        return config

    def validate(self) -> None:
        """Check the config against the schema, then that nncompress implements its algorithms.

        :raises ConfigError: the config is invalid.
        :raises UnknownAlgorithmError: a section names an algorithm NNCF 2.x never had.
        :raises UnsupportedAlgorithmError: a section names an NNCF 2.x algorithm nncompress does
            not implement, or the config has a ``bootstrapNAS`` section.
        """
        validate_config(self)
        supported = ", ".join(sorted(BUILT_ALGORITHMS))
        for section in self.algorithm_sections():
            if section.algorithm not in BUILT_ALGORITHMS:
                when = "yet" if section.algorithm in PLANNED_ALGORITHMS else "(it is not planned)"
                raise UnsupportedAlgorithmError(
                    f"{section.json_path}.algorithm",
                    f"{section.algorithm!r} is not supported by nncompress {when}; supported: {supported}",
                    section.algorithm,
                )
        if "bootstrapNAS" in self:
            raise UnsupportedAlgorithmError(
                "bootstrapNAS",
                f"BootstrapNAS (neural architecture search) is not supported by nncompress yet; "
                f"supported: {supported}",
                "bootstrapNAS",
            )

    @property
    def input_infos(self) -> list[InputInfo]:
        """The model inputs described by ``input_info`` (``[]`` if absent or an empty object).

        :return: one :class:`InputInfo` per input, in order.
        """
        infos = self.get("input_info")
        if not infos:
            return []
        return [
            InputInfo(
                shape=tuple(info["sample_size"]),
                dtype=info.get("type", "float"),
                keyword=info.get("keyword"),
                filler=info.get("filler"),
            )
            for info in ([infos] if isinstance(infos, dict) else infos)
        ]

    def algorithm_sections(self) -> list[AlgorithmSection]:
        """The ``compression`` sections, in order (``[]`` if there is none).

        :return: one :class:`AlgorithmSection` per section.
        """
        compression = self.get("compression")
        if compression is None:
            return []
        if isinstance(compression, dict):
            return [AlgorithmSection(compression["algorithm"], copy.deepcopy(compression), "compression")]
        return [
            AlgorithmSection(section["algorithm"], copy.deepcopy(section), f"compression[{i}]")
            for i, section in enumerate(compression)
        ]

    @property
    def target_device(self) -> str:
        """The ``target_device`` (``"ANY"`` if absent).

        :return: one of :data:`~nncompress.config.schema.TARGET_DEVICES`.
        """
        return str(self.get("target_device", "ANY"))

    @property
    def log_dir(self) -> str | None:
        """The ``log_dir`` for files written by the algorithms, if set.

        :return: the directory, or ``None``.
        """
        log_dir = self.get("log_dir")
        return None if log_dir is None else str(log_dir)

    def to_json(self, indent: int | None = 4) -> str:
        """The config as JSON text; :meth:`from_dict` of its parsed form gives an equal config.

        :param indent: indentation of the JSON text, ``None`` for one line.
        :return: the JSON text.
        """
        return json.dumps(self, indent=indent)
