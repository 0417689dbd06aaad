"""Post-training quantization (``nnc.quantize``): calibration time, fidelity, INT8 ONNX speed.

In one run, on 2 threads (PyTorch and onnxruntime):

1. **Digits CNN.** The dense digits CNN (15 epochs, seed 0) is quantized from 300 real training
   images (``nnc.Dataset(train_loader, lambda b: b[0])``, ``subset_size=300``: 5 batches of 64).
   ``quantize()`` wall time: median of 3 calls, each after one plain FP32 inference pass over the
   same calibration items, also timed: ``quantize s / FP32 pass`` is the figure least changed by
   other jobs on the machine (parts 3 and 4 report it too). Fidelity on the 360 test images:
   FP32 and INT8 accuracy and the logit relative error ``||q - fp|| / ||fp||`` (Frobenius norm
   over all test logits), with and without fast bias correction. The INT8 ONNX export
   (``nnc.export_model``) runs in onnxruntime: its accuracy and argmax agreement with the
   PyTorch quantized model.
2. **Baseline.** torch.ao post-training quantization of the same CNN on the same 5 batches:
   PT2E (``torch.export`` + ``prepare_pt2e``/``convert_pt2e`` with the X86 inductor quantizer)
   where it exists, else FX (``prepare_fx``/``convert_fx``, ``x86`` QConfigMapping, real
   quantized kernels); wall time of prepare + calibrate + convert (median of 3), accuracy and
   logit error, or the reason it did not run.
3. **ResNet latency.** The CIFAR-style ResNet of ``benchmarks/qat.py`` (random init, BatchNorm
   statistics adapted on smooth random images, batch 64 of 3x32x32) is quantized from 256
   random images (one call) and exported in FP32 (``export_onnx``) and INT8 (``nnc.export_model``).
   onnxruntime latency of each: the two sessions interleaved run by run, intra-op spinning off,
   median of 30 runs after warm-up, median of 3 rounds (``benchmarks/timing.py``). The ops of
   onnxruntime's optimized graphs are counted (QLinearConv / QLinearAdd / Conv ...).
4. **MiniLM.** all-MiniLM-L6-v2 is quantized from 100 real sentences (first paragraphs of
   standard-library docstrings, ``stdlib_docstrings`` of ``benchmarks/qat.py``), each tokenized
   alone (batch 1, no padding) and passed as a list of ``{"input_ids", "attention_mask"}``
   dicts. ``quantize(model_type="transformer")`` wall time: median of 3 calls. Fidelity: mean
   and min cosine between quantized and FP32 sentence embeddings (mean pooling under the
   attention mask, L2-normalised) on 64 other sentences; also with ``model_type`` detected
   from the graph, without fast bias correction, without SmoothQuant and with SmoothQuant alpha
   0.5 / 0.7 / 0.9 / 0.95 instead of the default 0.8 (one call each). FP32
   and INT8 ONNX exports (static batch 8 x seq 64, padded) are timed as in part 3, and the
   integer ops of onnxruntime's optimized INT8 graph are listed.
5. **Reference.** NNCF 3.4 on this machine, as reported in the issue (not measured here).

Prints a table per part and one JSON line. Run: ``python benchmarks/ptq.py`` (about 2 minutes
on 2 idle cores; the digits CNN's training is 15 s of it).
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from qat import (
    THREADS,
    _mean_pool,
    _minilm_dir,
    _op_counts,
    _ort_run,
    _session,
    random_images,
    resnet_with_statistics,
    stdlib_docstrings,
)
from timing import ROUNDS, STEPS, interleaved_steps
from torch import nn

import nncompress as nnc
from nncompress.api.statistics import format_table
from nncompress.demo.digits import digits_loaders, evaluate, predict, train_dense
from nncompress.torch.export import export_onnx

REPEATS = 3
"""quantize() calls whose median wall time is reported."""

DIGITS_SAMPLES = 300
RESNET_SAMPLES = 256
MINILM_CALIB = 100
MINILM_HELD_OUT = 64
ONNX_BATCH, ONNX_SEQ = 8, 64
INTEGER_OPS = ("QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
               "QGemm", "QAttention", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
               "MatMul", "FusedMatMul", "Gemm")
NNCF_REFERENCE = {
    "minilm_quantize_s": 16.0, "minilm_sentences": 100, "minilm_mean_cosine": 0.9976,
    "minilm_mean_cosine_without_model_type": 0.65, "digits_quantize_s": 2.0, "torch_ao_fx_digits_s": 0.8,
}
"""NNCF 3.4 ``nncf.quantize`` figures measured on this machine, from the issue."""

QUIET = nnc.AdvancedQuantizationParameters(progress=False)


def _median_wall(fn: Callable[[], nn.Module], repeats: int = 1) -> tuple[nn.Module, float]:
    """The last result of ``repeats`` calls of ``fn`` and their median wall seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _timed_quantize(
    model: nn.Module, data: Any, items: Sequence[Any], repeats: int = 1, **kwargs: Any
) -> tuple[nn.Module, float, float]:
    """``nnc.quantize(model, data, **kwargs)`` (progress off unless given): the quantized model, the
    median wall seconds of ``repeats`` calls, and the median seconds of one plain FP32 inference
    pass over the calibration ``items``, run before each call (the ratio of the two is what other
    jobs on the machine change least)."""
    kwargs.setdefault("advanced_parameters", QUIET)
    passes, calls, q = [], [], model
    for _ in range(repeats):
        _, seconds = _median_wall(partial(_fp32_pass, model, items))
        passes.append(seconds)
        q, seconds = _median_wall(lambda: nnc.quantize(model, data, **kwargs))
        calls.append(seconds)
    return q, statistics.median(calls), statistics.median(passes)


def _fp32_pass(model: nn.Module, items: Sequence[Any]) -> nn.Module:
    was_training = model.training
    model.eval()  # BatchNorm must not update its statistics
    with torch.inference_mode():
        for item in items:
            _ = model(**item) if isinstance(item, dict) else model(item)
    model.train(was_training)
    return model


def _rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``||got - ref|| / ||ref||`` over all elements."""
    return float((got - ref).norm() / ref.norm())


# -- parts 1 and 2: the digits CNN and the torch.ao baseline ----------------------------------------


def _ao_pt2e(model: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    try:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torch.ao.quantization.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as exc:
        raise ImportError(f"torch {torch.__version__} has no PT2E quantization in torch.ao "
                          f"(moved to torchao, not installed): {exc}") from exc
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    exported = torch.export.export(copy.deepcopy(model).eval(), (batches[0],)).module()
    prepared = prepare_pt2e(exported, quantizer)  # type: ignore[arg-type]
    with torch.no_grad():
        for x in batches:
            prepared(x)
    return convert_pt2e(prepared)  # type: ignore[no-any-return]


def _ao_fx(model: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (batches[0],))
    with torch.no_grad():
        for x in batches:
            prepared(x)
    return convert_fx(prepared)


def _ao_baseline(model: nn.Module, batches: Sequence[torch.Tensor]) -> tuple[str | None, nn.Module | None,
                                                                               float | None, list[str]]:
    """The first torch.ao PTQ flow that runs: ``(name, quantized model, median seconds, failures)``."""
    failures = []
    for name, flow in (("torch.ao PT2E (X86InductorQuantizer)", _ao_pt2e), ("torch.ao FX (x86 qconfig)", _ao_fx)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q, seconds = _median_wall(partial(flow, model, batches), REPEATS)
            return name, q, seconds, failures
        except Exception as exc:  # a baseline only: report why and go on
            failures.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    return None, None, None, failures


def digits_case(tmp: Path) -> dict[str, Any]:
    train, test = digits_loaders(seed=0)
    start = time.perf_counter()
    dense = train_dense(seed=0, loaders=(train, test))
    train_s = time.perf_counter() - start
    fp32_logits, labels = predict(dense, test)
    calibration = nnc.Dataset(train, lambda b: b[0])
    batches: list[torch.Tensor] = []  # what quantize() takes: the first 5 batches (320 images)
    for x, _ in train:
        batches.append(x)
        if sum(len(b) for b in batches) >= DIGITS_SAMPLES:
            break

    q, quantize_s, pass_s = _timed_quantize(dense, calibration, batches, REPEATS, subset_size=DIGITS_SAMPLES)
    q_nofbc, quantize_nofbc_s, _ = _timed_quantize(dense, calibration, batches, REPEATS,
                                                   subset_size=DIGITS_SAMPLES, fast_bias_correction=False)
    q_logits, _ = predict(q, test)

    path = tmp / "digits_int8.onnx"
    nnc.export_model(q, str(path))
    xs = torch.cat([x for x, _ in test]).numpy()
    got = _ort_run(_session(path), xs).argmax(1)

    # the baseline calibrates on the same 5 batches quantize() took
    ao_name, ao, ao_s, ao_failures = _ao_baseline(dense, batches)
    ao_logits = predict(ao, test)[0] if ao is not None else None
    return {
        "model": "digits CNN",
        "train_s": train_s,
        "calibration_samples": sum(len(b) for b in batches),
        "quantize_s": quantize_s,
        "quantize_no_fbc_s": quantize_nofbc_s,
        "fp32_pass_s": pass_s,
        "quantize_over_fp32_pass": quantize_s / pass_s,
        "fp32_accuracy": evaluate(dense, test),
        "int8_accuracy": evaluate(q, test),
        "int8_no_fbc_accuracy": evaluate(q_nofbc, test),
        "logit_rel_error": _rel_error(q_logits, fp32_logits),
        "logit_rel_error_no_fbc": _rel_error(predict(q_nofbc, test)[0], fp32_logits),
        "int8_onnx_accuracy": float((got == labels.numpy()).mean()),
        "int8_onnx_argmax_agreement_vs_torch": float((got == q_logits.argmax(1).numpy()).mean()),
        "int8_onnx_bytes": path.stat().st_size,
        "baseline": ao_name,
        "baseline_s": ao_s,
        "baseline_accuracy": float((ao_logits.argmax(1) == labels).float().mean()) if ao_logits is not None else None,
        "baseline_logit_rel_error": _rel_error(ao_logits, fp32_logits) if ao_logits is not None else None,
        "baseline_failures": ao_failures,
    }


# -- part 3: ResNet latency -------------------------------------------------------------------------


def _latency(fp32_path: Path, int8_path: Path, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """Interleaved onnxruntime latency of the two files on ``feed``, and their optimized graphs' paths."""
    fp32_opt, int8_opt = fp32_path.with_suffix(".opt.onnx"), int8_path.with_suffix(".opt.onnx")
    fp32_sess, int8_sess = _session(fp32_path, fp32_opt), _session(int8_path, int8_opt)
    times = interleaved_steps({"fp32": lambda: fp32_sess.run(None, feed), "int8": lambda: int8_sess.run(None, feed)})
    return {"fp32_ms": times["fp32"] * 1e3, "int8_ms": times["int8"] * 1e3,
            "int8_over_fp32": times["int8"] / times["fp32"], "fp32_opt": fp32_opt, "int8_opt": int8_opt,
            "int8_session": int8_sess}


def resnet_case(tmp: Path) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    model = resnet_with_statistics(gen)  # as in qat.py

    def images(n: int) -> torch.Tensor:
        return random_images(n, gen)

    calib = [images(64) for _ in range(RESNET_SAMPLES // 64)]
    x = images(64)

    q, quantize_s, pass_s = _timed_quantize(model, calib, calib, subset_size=RESNET_SAMPLES)
    fp32_path, int8_path = tmp / "resnet_fp32.onnx", tmp / "resnet_int8.onnx"
    export_onnx(model, ((x[:1],), {}), fp32_path)
    nnc.export_model(q, str(int8_path), model_args=(x[:1],))
    lat = _latency(fp32_path, int8_path, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    got = _ort_run(lat["int8_session"], x.numpy())
    return {
        "model": "CIFAR ResNet 32-64-128 (batch 64)",
        "calibration_samples": RESNET_SAMPLES,
        "quantize_s": quantize_s,
        "fp32_pass_s": pass_s,
        "quantize_over_fp32_pass": quantize_s / pass_s,
        "fp32_ms": lat["fp32_ms"],
        "int8_ms": lat["int8_ms"],
        "int8_over_fp32": lat["int8_over_fp32"],
        "fp32_onnx_bytes": fp32_path.stat().st_size,
        "int8_onnx_bytes": int8_path.stat().st_size,
        "int8_argmax_agreement_vs_fp32_torch": float((got.argmax(1) == ref.argmax(1)).mean()),
        "int8_logit_rel_error_vs_fp32_torch": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
        "fp32_optimized_ops": _op_counts(lat["fp32_opt"]),
        "int8_optimized_ops": _op_counts(lat["int8_opt"]),
        "int8_exported_ops": _op_counts(int8_path),
    }


# -- part 4: MiniLM -------------------------------------------------------------------------------


Encoded = dict[str, torch.Tensor]


def _embed(model: nn.Module, batches: Sequence[Encoded]) -> torch.Tensor:
    """Sentence embeddings (N, 384): masked mean of ``last_hidden_state``, L2-normalised."""
    with torch.no_grad():
        return torch.cat([F.normalize(_mean_pool(model(**b).last_hidden_state, b["attention_mask"]), dim=-1)
                          for b in batches])


def _cosines(model: nn.Module, batches: Sequence[Encoded], ref: torch.Tensor) -> tuple[float, float]:
    cos = (_embed(model, batches) * ref).sum(-1)
    return float(cos.mean()), float(cos.min())


def _integer_ops(path: Path) -> dict[str, int]:
    counts = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {op: counts[op] for op in INTEGER_OPS if counts[op]}


SMOOTH_QUANT_ALPHAS = (0.5, 0.7, 0.9, 0.95)


def minilm_case(tmp: Path) -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    folder = _minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    docs = stdlib_docstrings()
    order = np.random.default_rng(0).permutation(len(docs))
    calib_docs = [docs[i] for i in order[:MINILM_CALIB]]
    held_docs = [docs[i] for i in order[MINILM_CALIB:MINILM_CALIB + MINILM_HELD_OUT]]

    def encode(texts: list[str], padding: bool | str = False, max_length: int = 128) -> Encoded:
        enc = tok(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    calib = [encode([s]) for s in calib_docs]  # batch 1, no padding
    held = [encode(held_docs[i:i + 16], padding=True) for i in range(0, len(held_docs), 16)]
    ref = _embed(model, held)

    q, quantize_s, pass_s = _timed_quantize(model, calib, calib, REPEATS, subset_size=MINILM_CALIB,
                                            model_type="transformer")
    options: dict[str, dict[str, Any]] = {
        "model_type detected": {},
        "fast_bias_correction=False": {"model_type": "transformer", "fast_bias_correction": False},
        "SmoothQuant off": {"model_type": "transformer", "advanced_parameters":
                            nnc.AdvancedQuantizationParameters(smooth_quant_alpha=None, progress=False)},
    }
    for alpha in SMOOTH_QUANT_ALPHAS:  # the default is 0.8
        options[f"SmoothQuant alpha {alpha}"] = {"model_type": "transformer", "advanced_parameters":
                                                 nnc.AdvancedQuantizationParameters(smooth_quant_alpha=alpha,
                                                                                    progress=False)}
    variants: dict[str, dict[str, Any]] = {"model_type=transformer": {}, **{name: {} for name in options}}
    for name, variant in variants.items():
        if name in options:
            qv, seconds, seconds_pass = _timed_quantize(model, calib, calib, subset_size=MINILM_CALIB,
                                                        **options[name])
        else:
            qv, seconds, seconds_pass = q, quantize_s, pass_s
        variant["quantize_s"] = seconds
        variant["quantize_over_fp32_pass"] = seconds / seconds_pass
        variant["mean_cosine"], variant["min_cosine"] = _cosines(qv, held, ref)

    # ONNX: static batch 8 x seq 64, padded
    example = encode(held_docs[:ONNX_BATCH], padding="max_length", max_length=ONNX_SEQ)
    fp32_path, int8_path = tmp / "minilm_fp32.onnx", tmp / "minilm_int8.onnx"
    names = ["input_ids", "attention_mask"]
    export_onnx(model, ((), example), fp32_path, input_names=names)
    nnc.export_model(q, str(int8_path), model_args=(example,), input_names=names)
    feed = {k: v.numpy() for k, v in example.items()}
    lat = _latency(fp32_path, int8_path, feed)
    onnx_batches = [encode(held_docs[i:i + ONNX_BATCH], padding="max_length", max_length=ONNX_SEQ)
                    for i in range(0, len(held_docs), ONNX_BATCH)]
    got = torch.cat([F.normalize(_mean_pool(torch.from_numpy(lat["int8_session"].run(
        None, {k: v.numpy() for k, v in b.items()})[0]), b["attention_mask"]), dim=-1) for b in onnx_batches])
    ref64 = _embed(model, onnx_batches)
    return {
        "model": "all-MiniLM-L6-v2",
        "calibration_sentences": len(calib),
        "held_out_sentences": len(held_docs),
        "quantize_s": quantize_s,
        "fp32_pass_s": pass_s,
        "quantize_over_fp32_pass": quantize_s / pass_s,
        "mean_cosine": variants["model_type=transformer"]["mean_cosine"],
        "variants": variants,
        "fp32_ms": lat["fp32_ms"],
        "int8_ms": lat["int8_ms"],
        "int8_over_fp32": lat["int8_over_fp32"],
        "int8_onnx_mean_cosine_vs_fp32_torch": float((got * ref64).sum(-1).mean()),
        "fp32_onnx_bytes": fp32_path.stat().st_size,
        "int8_onnx_bytes": int8_path.stat().st_size,
        "int8_optimized_ops": _integer_ops(lat["int8_opt"]),
        "fp32_optimized_ops": _integer_ops(lat["fp32_opt"]),
    }


# -- main ----------------------------------------------------------------------------------------


def _print_tables(digits: dict[str, Any], resnet: dict[str, Any], minilm: dict[str, Any]) -> None:
    rows: list[tuple[Any, ...]] = [
        ("nnc.quantize", f"{digits['quantize_s']:.3f} ({digits['quantize_over_fp32_pass']:.1f}x)",
         digits["int8_accuracy"], digits["logit_rel_error"]),
        ("nnc.quantize, fast_bias_correction=False", digits["quantize_no_fbc_s"], digits["int8_no_fbc_accuracy"],
         digits["logit_rel_error_no_fbc"]),
        ("FP32", "-", digits["fp32_accuracy"], 0.0),
    ]
    print(format_table(
        ("method", "quantize s (/ FP32 pass)", "test accuracy", "||q - fp|| / ||fp||"), rows,
        title=f"1. digits CNN: {digits['calibration_samples']} calibration images (median of {REPEATS} calls), "
              "360 test images",
    ))
    print(format_table(
        ("figure", "value"),
        [("INT8 ONNX accuracy (onnxruntime)", digits["int8_onnx_accuracy"]),
         ("INT8 ONNX vs torch quantized: argmax agreement", digits["int8_onnx_argmax_agreement_vs_torch"])],
        title="   digits INT8 ONNX export",
    ))
    if digits["baseline"] is not None:
        base_rows: list[tuple[Any, ...]] = [
            ("nnc.quantize", digits["quantize_s"], digits["int8_accuracy"], digits["logit_rel_error"]),
            (digits["baseline"], digits["baseline_s"], digits["baseline_accuracy"],
             digits["baseline_logit_rel_error"])]
        print(format_table(("method", "s", "test accuracy", "||q - fp|| / ||fp||"), base_rows,
                           title=f"2. baseline on the same {digits['calibration_samples']} images (median of "
                                 f"{REPEATS})"))
    for failure in digits["baseline_failures"]:
        print(f"2. baseline did not run: {failure}")
    print(format_table(
        ("model", "quantize s (/ FP32 pass)", "FP32 ms", "INT8 ms", "INT8/FP32", "FP32 MB", "INT8 MB",
         "argmax agree"),
        [(resnet["model"], f"{resnet['quantize_s']:.3f} ({resnet['quantize_over_fp32_pass']:.1f}x)", resnet["fp32_ms"], resnet["int8_ms"], resnet["int8_over_fp32"],
          resnet["fp32_onnx_bytes"] / 1e6, resnet["int8_onnx_bytes"] / 1e6,
          resnet["int8_argmax_agreement_vs_fp32_torch"])],
        title=f"3. ResNet: onnxruntime latency, {THREADS} threads, no spinning (median of {STEPS} interleaved "
              f"runs, median of {ROUNDS} rounds); argmax: INT8 ort vs FP32 torch",
    ))
    print(format_table(
        ("op", "INT8 exported", "INT8 optimized", "FP32 optimized"),
        [(op, resnet["int8_exported_ops"][op], resnet["int8_optimized_ops"][op], resnet["fp32_optimized_ops"][op])
         for op in resnet["int8_optimized_ops"]
         if resnet["int8_exported_ops"][op] or resnet["int8_optimized_ops"][op] or resnet["fp32_optimized_ops"][op]],
        title="   ops of the ResNet graphs (onnxruntime's optimized graphs: SessionOptions.optimized_model_filepath)",
    ))
    print(format_table(
        ("quantize()", "s", "s / FP32 pass", "mean cosine", "min cosine"),
        [(name, v["quantize_s"], v["quantize_over_fp32_pass"], v["mean_cosine"], v["min_cosine"])
         for name, v in minilm["variants"].items()],
        title=f"4. MiniLM: {minilm['calibration_sentences']} calibration sentences (batch 1, unpadded; first row "
              f"median of {REPEATS} calls, others 1), cosine to FP32 on {minilm['held_out_sentences']} held-out",
    ))
    print(format_table(
        ("figure", "value"),
        [(f"onnxruntime FP32 / INT8 ms (batch {ONNX_BATCH} x seq {ONNX_SEQ})",
          f"{minilm['fp32_ms']:.2f} / {minilm['int8_ms']:.2f}"),
         ("INT8/FP32 latency", minilm["int8_over_fp32"]),
         ("FP32 / INT8 ONNX MB", f"{minilm['fp32_onnx_bytes'] / 1e6:.1f} / {minilm['int8_onnx_bytes'] / 1e6:.1f}"),
         ("INT8 ort vs FP32 torch: mean cosine", minilm["int8_onnx_mean_cosine_vs_fp32_torch"]),
         ("INT8 optimized graph ops", ", ".join(f"{k} {v}" for k, v in minilm["int8_optimized_ops"].items())),
         ("FP32 optimized graph ops", ", ".join(f"{k} {v}" for k, v in minilm["fp32_optimized_ops"].items()))],
        title="   MiniLM ONNX (same interleaved timing as part 3)",
    ))
    ref = NNCF_REFERENCE
    print(format_table(
        ("figure", "NNCF 3.4 (issue)", "nncompress (this run)"),
        [(f"MiniLM quantize s ({ref['minilm_sentences']} sentences)", ref["minilm_quantize_s"],
          minilm["quantize_s"]),
         ("MiniLM mean cosine, model_type=transformer", ref["minilm_mean_cosine"], minilm["mean_cosine"]),
         ("MiniLM mean cosine, no model_type", ref["minilm_mean_cosine_without_model_type"],
          minilm["variants"]["model_type detected"]["mean_cosine"]),
         ("digits CNN quantize s", ref["digits_quantize_s"], digits["quantize_s"]),
         ("torch.ao FX on digits s", ref["torch_ao_fx_digits_s"], digits["baseline_s"] or "-")],
        title="5. reference: NNCF 3.4 on this machine, from the issue (not measured by this script)",
    ))


def main() -> None:
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        digits = digits_case(tmp)
        t1 = time.perf_counter()
        resnet = resnet_case(tmp)
        t2 = time.perf_counter()
        minilm = minilm_case(tmp)
        t3 = time.perf_counter()
    digits["part_s"], resnet["part_s"], minilm["part_s"] = t1 - t0, t2 - t1, t3 - t2
    _print_tables(digits, resnet, minilm)
    print(json.dumps({"benchmark": "ptq", "threads": THREADS, "total_s": t3 - t0, "digits": digits,
                      "resnet": resnet, "minilm": minilm, "nncf_3_4_reference": NNCF_REFERENCE}))


if __name__ == "__main__":
    main()
