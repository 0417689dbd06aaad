"""Save and load weight-compressed models: packed codes on disk, rebuilt into a fresh float model.

A checkpoint is one ``torch.save`` file holding a plain dict, loadable with
``torch.load(path, weights_only=True)``::

    {"format": "nncompress.compressed_weights", "version": 1,
     "metadata": "<JSON string: one entry per compressed module>",
     "state_dict": model.state_dict()}       # packed buffers as they are, float tensors as they are

Each metadata entry names the module (``name``), its ``kind`` (``linear``/``embedding``), ``mode``,
``group_size``, ``in_features``, ``out_features``, ``has_bias``, ``has_input_multiplier``,
``padding_idx`` (embeddings) and ``tied_to`` (the embedding a tied LM head reads, else ``None``).
Tied tensors share storage in the state dict, so ``torch.save`` writes them once.

Example::

    save_compressed(model, "smollm2-int4.pt")
    fresh = AutoModelForCausalLM.from_config(config)      # same architecture, float weights
    model = load_compressed(fresh, "smollm2-int4.pt")
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nncompress.errors import CompressionStateError, InvalidArgumentError
from nncompress.functional.weight_quant import QuantizedWeight, WeightQuantSpec, group_count
from nncompress.weight_compression.modules import CompressedEmbedding, CompressedLinear, unpack_codes

FORMAT = "nncompress.compressed_weights"
VERSION = 1


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted ``name`` (e.g. ``model.layers.0.mlp.up_proj``) to ``new``.

    :raises InvalidArgumentError: if ``name`` is empty or its parent does not exist.
    """
    if not name:
        raise InvalidArgumentError("module name must be a non-empty dotted path, got ''")
    parent_name, _, attr = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError as err:
        raise InvalidArgumentError(f"model has no module {parent_name!r} (parent of {name!r})") from err
    setattr(parent, attr, new)


def compressed_layers(model: nn.Module) -> list[dict[str, Any]]:
    """The metadata entries (module doc) of every compressed module of ``model``."""
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    entries = []
    for name, m in modules.items():
        if not isinstance(m, (CompressedLinear, CompressedEmbedding)):
            continue
        tied = names.get(id(m._tie_source[0])) if m._tie_source else None
        entries.append({
            "name": name,
            "kind": "linear" if isinstance(m, CompressedLinear) else "embedding",
            "mode": m.spec.mode,
            "group_size": m.spec.group_size,
            "in_features": m.in_features,
            "out_features": m.out_features,
            "has_bias": isinstance(m, CompressedLinear) and m.bias is not None,
            "has_input_multiplier": isinstance(m, CompressedLinear) and m.input_multiplier is not None,
            "padding_idx": m.padding_idx if isinstance(m, CompressedEmbedding) else None,
            "tied_to": tied,
        })
    return entries


def save_compressed(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s whole state and the list of its compressed modules to ``path``.

    The write is atomic: a temporary file in the same folder is renamed over ``path`` once
    complete, so a failure leaves no partial file (and an older ``path`` intact).

    :raises InvalidArgumentError: if ``model`` holds no compressed module.
    """
    entries = compressed_layers(model)
    if not entries:
        raise InvalidArgumentError("model holds no CompressedLinear / CompressedEmbedding; compress it first")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "metadata": json.dumps(entries),
        "state_dict": model.state_dict(),
    }
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_compressed(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Turn a fresh float ``model`` (same architecture) into the compressed model saved at ``path``.

    Every listed module is rebuilt from the file's buffers (tied LM heads re-tied to their
    embedding), then the whole state is loaded. Everything is checked before the model is touched:
    on any error the model is unchanged.

    :return: ``model`` itself, its listed modules replaced.
    :raises CompressionStateError: if the file is not a compressed-weights checkpoint, names a module
        the model lacks, or holds shapes that do not fit the model.
    """
    entries, state = _read(path)
    made: dict[str, nn.Module] = {}
    for e in sorted(entries, key=lambda e: e["tied_to"] is not None):
        _check_target(model, e)
        made[e["name"]] = _build(e, state, made)
    _check_state(model, made, state)
    for name, module in made.items():
        replace_module(model, name, module)
    model.load_state_dict(state, strict=True)
    return model


def _read(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is "not ours"
        raise CompressionStateError(f"{os.fspath(path)!r} is not a readable torch file: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressionStateError(f"{os.fspath(path)!r} is not a {FORMAT} checkpoint (see save_compressed)")
    if payload.get("version") != VERSION:
        raise CompressionStateError(f"checkpoint version {payload.get('version')!r} is not supported (only {VERSION})")
    try:
        entries = json.loads(payload["metadata"])
        state = payload["state_dict"]
        keys = {"name", "kind", "mode", "group_size", "in_features", "out_features", "tied_to"}
        if not isinstance(state, dict) or not all(keys <= set(e) for e in entries):
            raise ValueError("missing fields")
    except (KeyError, TypeError, ValueError) as err:
        raise CompressionStateError(f"{os.fspath(path)!r} holds malformed metadata: {err}") from err
    return entries, state


def _check_target(model: nn.Module, e: dict[str, Any]) -> None:
    """The float module ``e`` replaces exists and has the saved shape."""
    name = e["name"]
    try:
        old = model.get_submodule(name)
    except AttributeError as err:
        raise CompressionStateError(f"checkpoint module {name!r} is not in the model") from err
    if e["kind"] == "linear":
        shape = (getattr(old, "out_features", None), getattr(old, "in_features", None))
    elif e["kind"] == "embedding":
        shape = (getattr(old, "num_embeddings", None), getattr(old, "embedding_dim", None))
    else:
        raise CompressionStateError(f"module {name!r}: kind must be linear or embedding, got {e['kind']!r}")
    if shape != (e["out_features"], e["in_features"]):
        raise CompressionStateError(
            f"module {name!r}: the model's {type(old).__name__} is {shape}, the checkpoint's "
            f"{e['kind']} is {(e['out_features'], e['in_features'])}"
        )


def _build(e: dict[str, Any], state: dict[str, Tensor], made: dict[str, nn.Module]) -> nn.Module:
    """The compressed module of entry ``e``, from the file's tensors (shapes checked)."""
    name, n, k = e["name"], e["out_features"], e["in_features"]
    bias = state.get(f"{name}.bias") if e.get("has_bias") else None
    if e["tied_to"] is not None:
        source = made.get(e["tied_to"])
        if not isinstance(source, CompressedEmbedding) or e["kind"] != "linear":
            raise CompressionStateError(f"module {name!r} is tied to {e['tied_to']!r}, not a saved embedding")
        return CompressedLinear.tied_to(source, bias)
    try:
        spec = WeightQuantSpec.from_mode(e["mode"], e["group_size"])
    except InvalidArgumentError as err:
        raise CompressionStateError(f"module {name!r}: {err}") from err
    groups, g = group_count(k, spec.group_size)
    packed_cols = groups * g if spec.bits == 8 else -(-groups * g // 2)
    expected = {"weight_packed": (n, packed_cols), "scale": (n, groups)}
    if not spec.symmetric:
        expected["zero_point"] = (n, groups)
    for buf, shape in expected.items():
        t = state.get(f"{name}.{buf}")
        if t is None or tuple(t.shape) != shape:
            got = None if t is None else tuple(t.shape)
            raise CompressionStateError(f"{name}.{buf}: expected shape {shape}, the checkpoint holds {got}")
    codes = unpack_codes(state[f"{name}.weight_packed"], spec, groups * g)
    zp = state[f"{name}.zero_point"].to(torch.int16) if not spec.symmetric else None
    qw = QuantizedWeight(codes, state[f"{name}.scale"].float(), zp, spec, k)
    try:
        if e["kind"] == "embedding":
            return CompressedEmbedding.from_quantized(qw, padding_idx=e.get("padding_idx"))
        multiplier = state.get(f"{name}.input_multiplier") if e.get("has_input_multiplier") else None
        return CompressedLinear.from_quantized(qw, bias, multiplier)
    except InvalidArgumentError as err:
        raise CompressionStateError(f"module {name!r}: {err}") from err


def _check_state(model: nn.Module, made: dict[str, nn.Module], state: dict[str, Tensor]) -> None:
    """The file's state dict has exactly the keys and shapes the model will have after replacement."""
    prefixes = tuple(f"{name}." for name in made)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    for name, module in made.items():
        expected.update({f"{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CompressionStateError(
            f"checkpoint does not fit the model: missing keys {missing[:5]}, unexpected keys {extra[:5]}"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CompressionStateError(f"{key}: the model expects shape {shape}, the checkpoint holds "
                                        f"{tuple(state[key].shape)}")


__all__ = ["FORMAT", "VERSION", "compressed_layers", "load_compressed", "replace_module", "save_compressed"]
