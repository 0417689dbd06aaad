"""The end-to-end demo: dense CNN -> 70% magnitude sparsity, INT8 QAT, INT8 PTQ -> ONNX -> onnxruntime.

Run it with ``nncompress demo`` or::

    from nncompress.demo import run_demo
    figures = run_demo("runs/demo")

It trains :class:`~nncompress.demo.digits.DigitsCNN` on scikit-learn's digits, sparsifies it
with the NNCF 2.x training-time flow (``create_compressed_model``, ``scheduler.epoch_step()`` /
``step()``, ``ctrl.loss()``), exports the dense and the sparse model to ONNX, runs both in
onnxruntime on the test set, then quantizes the dense model to INT8 twice (two epochs of
quantization-aware training from an NNCF 2.x config; ``nnc.quantize`` from 300 images without
training), exports and checks both, and prints a summary table. Sparse weights are stored as explicit
zeros in ONNX, so the raw file is as large as the dense one; the gzip-compressed size shows the
gain. The figures are returned and written to ``<out_dir>/summary.json``.
"""

from __future__ import annotations

import copy
import gzip
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.utils.data import DataLoader

import nncompress as nnc
from nncompress.api.compression import CompressionAlgorithmController
from nncompress.api.statistics import format_table
from nncompress.demo.digits import (
    DENSE_EPOCHS,
    DigitsCNN,
    digits_loaders,
    evaluate,
    predict,
    train_dense,
    train_epoch,
)
from nncompress.errors import InvalidArgumentError
from nncompress.torch.export import export_onnx

FINETUNE_EPOCHS = 8
"""Fine-tuning epochs of the demo: the level rises over 3, masks freeze at 5, then 3 more."""

SPARSITY_TARGET = 0.7
"""The demo's target sparsity level."""

ATOL = 1e-4
"""Largest allowed difference between onnxruntime and PyTorch logits."""


def sparsity_config(target: float = SPARSITY_TARGET, target_epoch: int = 3, freeze_epoch: int = 5) -> dict[str, Any]:
    """The demo's compression config, as a dict in NNCF 2.x format.

    :param target: ``sparsity_target``.
    :param target_epoch: epoch at which the polynomial schedule reaches the target.
    :param freeze_epoch: epoch from which the masks no longer change.
    :return: the config dict (``CompressionConfig.from_dict`` accepts it; so did NNCF 2.x).
    """
    return {
        "input_info": {"sample_size": [1, 1, 8, 8]},
        "compression": {
            "algorithm": "magnitude_sparsity",
            "sparsity_init": 0.0,
            "params": {
                "schedule": "polynomial",
                "power": 3,
                "concave": True,
                "sparsity_target": target,
                "sparsity_target_epoch": target_epoch,
                "sparsity_freeze_epoch": freeze_epoch,
            },
        },
    }


def sparsify(
    model: nn.Module,
    train: DataLoader[Any],
    config: dict[str, Any] | None = None,
    epochs: int = FINETUNE_EPOCHS,
    progress: bool = False,
) -> tuple[CompressionAlgorithmController[nn.Module], nn.Module]:
    """Compress ``model`` with ``config`` and fine-tune it under the compression schedule.

    Adam (learning rate 3e-3, cosine decay); ``ctrl.scheduler.epoch_step()`` before each epoch,
    ``ctrl.scheduler.step()`` and ``ctrl.loss()`` in each step (:func:`train_epoch`).

    :param model: the trained dense model (compressed in place and returned).
    :param train: the training loader.
    :param config: an NNCF 2.x config dict; default :func:`sparsity_config`.
    :param epochs: fine-tuning epochs.
    :param progress: show a tqdm bar per epoch.
    :return: ``(ctrl, model)`` as from ``create_compressed_model``.
    """
    ctrl, model = nnc.create_compressed_model(model, nnc.CompressionConfig.from_dict(config or sparsity_config()))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    for epoch in range(epochs):
        ctrl.scheduler.epoch_step()
        desc = f"fine-tune {epoch + 1}/{epochs} sparsity {ctrl.compression_rate:.2f}"
        train_epoch(model, train, optimizer, ctrl, progress=desc if progress else None)
        cosine.step()
    return ctrl, model


QAT_EPOCHS = 2
PTQ_SAMPLES = 300
"""Epochs of quantization-aware training in the demo."""


def qat_config() -> dict[str, Any]:
    """The demo's INT8 quantization config (NNCF 2.x format): ranges and BatchNorm statistics
    initialised on 256 training images."""
    return {
        "input_info": {"sample_size": [1, 1, 8, 8]},
        "compression": {
            "algorithm": "quantization",
            "initializer": {
                "range": {"num_init_samples": 256},
                "batchnorm_adaptation": {"num_bn_adaptation_samples": 256},
            },
        },
    }


def quantize_aware(
    model: nn.Module, train: DataLoader[Any], epochs: int = QAT_EPOCHS, progress: bool = False
) -> tuple[CompressionAlgorithmController[nn.Module], nn.Module]:
    """INT8 quantization-aware training of a trained model: :func:`qat_config`, Adam at 1e-3.

    :param model: the trained model (compressed in place and returned).
    :param train: the training loader (also the calibration data).
    :param epochs: QAT epochs.
    :param progress: show a tqdm bar per epoch.
    :return: ``(ctrl, model)``.
    """
    ctrl, model = nnc.create_compressed_model(model, qat_config(), init_data=train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        ctrl.scheduler.epoch_step()
        train_epoch(model, train, optimizer, ctrl, progress=f"QAT {epoch + 1}/{epochs}" if progress else None)
    return ctrl, model


def run_demo(
    out_dir: str = "runs/demo",
    epochs: int = DENSE_EPOCHS,
    finetune_epochs: int = FINETUNE_EPOCHS,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, sparsify, export and check; print what happens and a summary table.

    :param out_dir: folder for ``dense.onnx``, ``sparse.onnx`` and ``summary.json``.
    :param epochs: dense training epochs.
    :param finetune_epochs: fine-tuning epochs under the sparsity schedule (at least 4, so that
        the level reaches its target at epoch 3).
    :param seed: seed of initialisation and data order.
    :param progress: show tqdm progress bars.
    :return: the figures: accuracies (``*_acc``), sparsity levels, file sizes in bytes, the
        onnxruntime/PyTorch agreement and ``onnx_agrees`` (all checks passed), ``seconds``.
    :raises InvalidArgumentError: if ``epochs`` or ``finetune_epochs`` is below 1.
    """
    if epochs < 1 or finetune_epochs < 1:
        raise InvalidArgumentError(
            f"epochs and finetune_epochs must be at least 1, got epochs={epochs}, finetune_epochs={finetune_epochs}"
        )
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train, test = digits_loaders(seed=seed)
    example = next(iter(test))[0][:1]  # (1, 1, 8, 8)

    print(f"== 1. dense training: DigitsCNN ({_n_params(DigitsCNN())} parameters), {epochs} epochs")
    dense = train_dense(epochs, seed, (train, test), progress=progress)
    fig: dict[str, Any] = {"dense_acc": evaluate(dense, test)}
    print(f"dense test accuracy: {fig['dense_acc']:.4f}")
    export_onnx(dense, ((example,), {}), out / "dense.onnx", input_names=["images"], output_names=["logits"])

    print("\n== 2. magnitude sparsity: the NNCF 2.x config")
    config = sparsity_config()
    print(json.dumps(config, indent=2))
    print(f"\n== 3. fine-tuning under the schedule, {finetune_epochs} epochs")
    ctrl, model = sparsify(copy.deepcopy(dense), train, config, finetune_epochs, progress)
    report = getattr(ctrl, "capture_report", None)
    if report is not None:
        print(report.to_str())
    print(ctrl.statistics().to_str())
    fig["sparse_acc"] = evaluate(model, test)
    stripped = ctrl.strip(do_copy=True)
    fig["stripped_acc"] = evaluate(stripped, test)
    for name, net in (("dense", dense), ("sparse", stripped)):
        fig[f"{name}_sparsity_layers"] = _zero_fraction([net.get_parameter(w) for w in compressed_weights(ctrl)])
        fig[f"{name}_sparsity_model"] = _zero_fraction(list(net.parameters()))

    print("\n== 4. ONNX export and onnxruntime")
    ctrl.export_model(str(out / "sparse.onnx"), input_names=["images"], output_names=["logits"])
    print(f"wrote {out / 'dense.onnx'} and {out / 'sparse.onnx'}; running both in onnxruntime on the test set")
    fig.update(_onnx_figures(out, {"dense": dense, "sparse": stripped}, test))

    print(f"\n== 5. INT8 quantization-aware training of the dense model, {QAT_EPOCHS} epochs")
    print(json.dumps(qat_config(), indent=2))
    qctrl, qmodel = quantize_aware(copy.deepcopy(dense), train, QAT_EPOCHS, progress)
    print(qctrl.statistics().to_str())
    fig["int8_acc"] = evaluate(qmodel, test)
    qctrl.export_model(str(out / "int8.onnx"), input_names=["images"], output_names=["logits"])
    native = qctrl.strip(strip_format=nnc.StripFormat.NATIVE).eval()
    fig.update(_onnx_figures(out, {"int8": native}, test))
    print(f"wrote {out / 'int8.onnx'} (QuantizeLinear/DequantizeLinear, BatchNorm folded)")

    print(f"\n== 6. INT8 post-training quantization of the dense model: nnc.quantize, {PTQ_SAMPLES} images, no training")
    ptq = nnc.quantize(dense, nnc.Dataset(train, lambda batch: batch[0]), subset_size=PTQ_SAMPLES,
                       advanced_parameters=nnc.AdvancedQuantizationParameters(progress=progress))
    fig["ptq_acc"] = evaluate(ptq, test)
    nnc.export_model(ptq, str(out / "ptq.onnx"), input_names=["images"], output_names=["logits"])
    fig.update(_onnx_figures(out, {"ptq": nnc.strip(ptq).eval()}, test))
    print(f"wrote {out / 'ptq.onnx'}")
    fig["onnx_agrees"] = all(
        fig[f"{n}_ort_argmax_agreement"] >= 0.99 and fig[f"{n}_ort_max_abs_diff"] <= ATOL for n in ("dense", "sparse")
    ) and all(fig[f"{n}_ort_argmax_agreement"] >= 0.99 for n in ("int8", "ptq"))
    fig["seconds"] = time.perf_counter() - start
    print(summary_table(fig))
    (out / "summary.json").write_text(json.dumps(fig, indent=2) + "\n")
    print(json.dumps(fig))
    return fig


def compressed_weights(ctrl: CompressionAlgorithmController[nn.Module]) -> list[str]:
    """Names of the weights ``ctrl`` compresses (``stem.0.weight``...), from its capture report.

    :param ctrl: a controller of one algorithm.
    :return: qualified parameter names; empty if the controller has no capture report.
    """
    report = getattr(ctrl, "capture_report", None)
    return [row.weight for row in report.compressed] if report is not None else []


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _zero_fraction(tensors: list[torch.Tensor]) -> float:
    zeros = sum(int((t == 0).sum()) for t in tensors)
    total = sum(t.numel() for t in tensors)
    return zeros / total if total else 0.0


def _onnx_figures(out: Path, models: dict[str, nn.Module], test: DataLoader[Any]) -> dict[str, Any]:
    """For each ``<name>.onnx``: accuracy in onnxruntime, agreement with the PyTorch model
    ``models[name]``, raw and gzip file sizes, zeros in the weights."""
    fig: dict[str, Any] = {}
    for name, model in models.items():
        torch_logits, labels = predict(model, test)
        path = out / f"{name}.onnx"
        logits = _ort_logits(path, test)
        fig[f"ort_{name}_acc"] = float((logits.argmax(1) == labels.numpy()).mean())
        fig[f"{name}_ort_argmax_agreement"] = float((logits.argmax(1) == torch_logits.argmax(1).numpy()).mean())
        fig[f"{name}_ort_max_abs_diff"] = float(np.abs(logits - torch_logits.numpy()).max())
        raw = path.read_bytes()
        fig[f"{name}_onnx_bytes"] = len(raw)
        fig[f"{name}_onnx_gzip_bytes"] = len(gzip.compress(raw, compresslevel=9, mtime=0))
        fig[f"{name}_onnx_weight_sparsity"] = _onnx_weight_sparsity(path)
    return fig


def _ort_logits(path: Path, loader: DataLoader[Any]) -> np.ndarray:
    """Logits of an ONNX file over ``loader``, one sample at a time (the export has batch 1)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = [session.run(None, {name: x[i : i + 1].numpy()})[0] for x, _ in loader for i in range(len(x))]
    return np.concatenate(rows)


def _onnx_weight_sparsity(path: Path) -> float:
    """Share of zeros in the file's multi-dimensional initializers (conv and linear weights)."""
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if len(t.dims) > 1]
    total = sum(w.size for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def summary_table(fig: dict[str, Any]) -> str:
    """The demo's summary: FP32 against sparse, in PyTorch and onnxruntime.

    :param fig: the figures returned by :func:`run_demo`.
    :return: the table as text.
    """
    kib = 1024.0
    names = ("dense", "sparse", "int8", "ptq")

    def row(label: str, key: str, scale: float = 1.0) -> tuple[Any, ...]:
        return (label, *(fig[key.format(n)] / scale if key.format(n) in fig else "-" for n in names))

    rows = [
        ("test accuracy, PyTorch", fig["dense_acc"], fig["sparse_acc"], fig["int8_acc"], fig["ptq_acc"]),
        ("test accuracy, PyTorch stripped", "-", fig["stripped_acc"], "-", "-"),
        row("test accuracy, onnxruntime", "ort_{}_acc"),
        row("zeros in the sparsified weights", "{}_sparsity_layers"),
        row("zeros in ONNX weight tensors", "{}_onnx_weight_sparsity"),
        row("ONNX file, KiB", "{}_onnx_bytes", kib),
        row("ONNX file gzip -9, KiB", "{}_onnx_gzip_bytes", kib),
        row("onnxruntime vs PyTorch: argmax agreement", "{}_ort_argmax_agreement"),
        ("onnxruntime vs PyTorch: max |logit diff|", *(f"{fig[f'{n}_ort_max_abs_diff']:.2e}" for n in names)),
    ]
    verdict = "agree" if fig["onnx_agrees"] else "DISAGREE"
    title = f"\nSummary (onnxruntime and PyTorch {verdict}; {fig['seconds']:.1f} s)"
    return format_table(("", "FP32", "sparse 70%", "INT8 QAT", "INT8 PTQ"), rows, title)
