"""Filter pruning: FLOPs, parameters, accuracy, training-step time and onnxruntime latency.

Three parts, in one run:

1. **digits ResNet** (:class:`~nncompress.demo.cnns.CifarResNet` 16-32-64, two blocks per stage,
   on scikit-learn's real 8x8 digits): trained dense, then ``filter_pruning`` with
   ``pruning_flops_target`` 0.4 (every group prunable: ``prune_first_conv`` and
   ``prune_downsample_convs``; exponential schedule over 3 epochs) and fine-tuned. FLOPs and
   parameters are recounted on the stripped, physically smaller model (capture of the stripped
   model, independent of the controller's own figure); test accuracy of the pruned model against
   the dense one; training-step time with the pruning masks over the plain model's (median of
   interleaved steps, ``benchmarks/timing.py``); onnxruntime latency of the pruned export over the
   dense export.
2. **CIFAR ResNet 32-64-128** at 32x32 (seeded random weights with BatchNorm statistics: structure
   and speed only, no accuracy): the same 40% FLOPs target, groups prunable, FLOPs removed, ONNX
   size and onnxruntime latency pruned / dense at batch 64, with kept channels in multiples of 16
   (the default ``channel_multiple``) and with exact counts (``channel_multiple`` 1). Beside it, plain
   (unpruned) ResNets of hand-picked widths against the 32-64-128 one: FLOPs share and latency
   share, to show that widths off a multiple of 16 lose most of the speed their FLOPs promise.
3. **One config, prune -> sparsify -> QAT -> INT8 ONNX**: ``filter_pruning`` (40% FLOPs) +
   ``magnitude_sparsity`` (50%) + ``quantization`` in one NNCF 2.x config
   (``examples/configs/digits_prune_sparsify_int8.json``). On the digits ResNet it is trained from
   the dense model and its INT8 ONNX accuracy is measured in onnxruntime; on the CIFAR ResNet
   (ranges initialised on random images, no training) its INT8 ONNX latency is measured against the
   dense FP32 export and against INT8 quantization alone.

Prints a table per part and one JSON line. Run: ``python benchmarks/pruning.py`` (about 2 minutes on
2 idle cores).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from qat import THREADS, _ort_run, _session, random_images, resnet_with_statistics  # benchmarks/qat.py
from timing import Batch, interleaved_steps, training_step  # benchmarks/timing.py
from torch import nn
from torch.utils.data import DataLoader

import nncompress as nnc
from nncompress.api.statistics import format_table
from nncompress.demo.cnns import CifarResNet
from nncompress.demo.digits import digits_loaders, evaluate, predict, train_dense, train_epoch
from nncompress.graph.capture import capture
from nncompress.graph.channel_groups import channel_groups
from nncompress.graph.flops import layer_costs, total_flops
from nncompress.torch.export import export_onnx

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
FLOPS_TARGET = 0.4
FINE_TUNE_EPOCHS = 8


def pruning_section(schedule: str = "exponential", steps: int = 3, multiple: int = 16) -> dict[str, Any]:
    """A ``filter_pruning`` section at the 40% FLOPs target with every group prunable."""
    return {"algorithm": "filter_pruning", "pruning_init": 0.1,
            "params": {"schedule": schedule, "pruning_flops_target": FLOPS_TARGET, "pruning_steps": steps,
                       "num_init_steps": 0, "prune_first_conv": True, "prune_downsample_convs": True,
                       "channel_multiple": multiple}}


def dense_counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """FLOPs (2 x MACs of convs and linears at batch 1) and parameters of ``model`` as it is now."""
    graph = capture(model.eval(), (x[:1],), {})
    costs = layer_costs(graph, channel_groups(graph, model))
    return total_flops(costs), sum(p.numel() for p in model.parameters())


def latency_pair(paths: dict[str, Path], x: np.ndarray) -> dict[str, float]:
    """Median onnxruntime latency (ms) of each file on ``x``, the files run in turn step by step."""
    sessions = {k: _session(p) for k, p in paths.items()}
    times = interleaved_steps({k: (lambda s=s: _ort_run(s, x)) for k, s in sessions.items()})
    return {k: v * 1e3 for k, v in times.items()}


def ort_accuracy(path: Path, test: DataLoader[Any]) -> float:
    """Top-1 accuracy of an exported classifier in onnxruntime."""
    xs = torch.cat([x for x, _ in test]).numpy()
    labels = torch.cat([y for _, y in test]).numpy()
    return float((_ort_run(_session(path), xs).argmax(1) == labels).mean())


def fine_tune(ctrl: Any, model: nn.Module, train: DataLoader[Any], epochs: int) -> None:
    """Adam with a cosine learning rate, the compression scheduler stepped as NNCF's loop does."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        train_epoch(model, train, opt, ctrl)
        schedule.step()


# -- part 1 -----------------------------------------------------------------------------------------


def digits_resnet() -> CifarResNet:
    return CifarResNet(in_channels=1, widths=(16, 32, 64), blocks=2)


def digits_case(tmp: Path, dense: nn.Module, loaders: tuple[DataLoader[Any], DataLoader[Any]]) -> dict[str, Any]:
    train, test = loaders
    x = next(iter(test))[0]
    dense_acc = evaluate(dense, test)
    config = {"input_info": {"sample_size": [1, 1, 8, 8]}, "compression": pruning_section()}
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(dense), config)
    fine_tune(ctrl, model, train, FINE_TUNE_EPOCHS)
    pruned_acc = evaluate(model, test)
    stats = ctrl.statistics().filter_pruning
    stripped = ctrl.strip(do_copy=True)
    (dense_flops, dense_params), (small_flops, small_params) = dense_counts(dense, x), dense_counts(stripped, x)

    # training-step time on one fixed batch of real digits, masks in place
    bx, by = next(iter(train))
    batch: Batch = ((bx,), {}, by)
    ctrl2, masked = nnc.create_compressed_model(copy.deepcopy(dense), config)
    ctrl2.scheduler.epoch_step()
    times = interleaved_steps({"plain": training_step(copy.deepcopy(dense).train(), batch, F.cross_entropy, lr=1e-4),
                               "pruning": training_step(masked.train(), batch, F.cross_entropy, ctrl2, lr=1e-4)})

    dense_path, pruned_path = tmp / "digits_dense.onnx", tmp / "digits_pruned.onnx"
    export_onnx(dense.eval(), ((x[:1],), {}), dense_path)
    ctrl.export_model(str(pruned_path))
    xs = torch.cat([b for b, _ in test])[:256].numpy()
    lat = latency_pair({"dense": dense_path, "pruned": pruned_path}, xs)
    return {
        "model": "digits ResNet 16-32-64 (real digits)",
        "groups": len(ctrl.channel_groups), "groups_pruned": len(ctrl.pruned_groups),
        "flops_removed_controller": stats.flops_pruning_level,
        "flops_removed_recounted": 1 - small_flops / dense_flops,
        "params_removed": 1 - small_params / dense_params,
        "dense_accuracy": dense_acc, "pruned_accuracy": pruned_acc,
        "pruned_onnx_accuracy": ort_accuracy(pruned_path, test),
        "step_ratio": times["pruning"] / times["plain"],
        "ort_dense_ms": lat["dense"], "ort_pruned_ms": lat["pruned"], "ort_ratio": lat["pruned"] / lat["dense"],
        "stripped_class": type(stripped).__name__,
    }


# -- part 2 -----------------------------------------------------------------------------------------


def cifar_case(tmp: Path, multiple: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    dense = resnet_with_statistics(gen)
    x = random_images(64, gen)
    config = {"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": pruning_section("baseline", multiple=multiple)}
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(dense), config)
    ctrl.scheduler.epoch_step()  # the baseline schedule sets the target at once
    stats = ctrl.statistics().filter_pruning
    stripped = ctrl.strip(do_copy=True)
    (dense_flops, dense_params), (small_flops, small_params) = dense_counts(dense, x), dense_counts(stripped, x)
    dense_path, pruned_path = tmp / "cifar_dense.onnx", tmp / f"cifar_pruned_{multiple}.onnx"
    export_onnx(dense, ((x[:1],), {}), dense_path)
    ctrl.export_model(str(pruned_path))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = _ort_run(_session(pruned_path), x.numpy())
    lat = latency_pair({"dense": dense_path, "pruned": pruned_path}, x.numpy())
    return {
        "model": "CIFAR ResNet 32-64-128, 32x32 (random weights)", "channel_multiple": multiple,
        "kept_widths": sorted(ctrl.kept_channels().values()),
        "groups": len(ctrl.channel_groups), "groups_pruned": len(ctrl.pruned_groups),
        "flops_removed_controller": stats.flops_pruning_level,
        "flops_removed_recounted": 1 - small_flops / dense_flops,
        "params_removed": 1 - small_params / dense_params,
        "onnx_bytes_ratio": pruned_path.stat().st_size / dense_path.stat().st_size,
        "onnx_max_abs_error_vs_masked_torch": float(np.abs(got - ref).max()),
        "ort_dense_ms": lat["dense"], "ort_pruned_ms": lat["pruned"], "ort_ratio": lat["pruned"] / lat["dense"],
    }


WIDTHS = [(32, 64, 128), (19, 38, 77), (24, 48, 96), (16, 48, 96), (16, 32, 64)]


def widths_case(tmp: Path) -> list[dict[str, Any]]:
    """Plain ResNets of other widths against 32-64-128: FLOPs share and onnxruntime latency share."""
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    paths, flops = {}, {}
    for w in WIDTHS:
        torch.manual_seed(0)
        model = CifarResNet(widths=w).eval()
        paths[w] = tmp / f"widths_{'_'.join(map(str, w))}.onnx"
        export_onnx(model, ((x[:1],), {}), paths[w])
        flops[w] = dense_counts(model, x)[0]
    lat = latency_pair({str(w): p for w, p in paths.items()}, x.numpy())
    base = WIDTHS[0]
    return [{"widths": list(w), "flops_share": flops[w] / flops[base], "latency_share": lat[str(w)] / lat[str(base)],
             "ms": lat[str(w)]} for w in WIDTHS]


# -- part 3 -----------------------------------------------------------------------------------------


def combined_config(sample_size: list[int]) -> dict[str, Any]:
    """The example config of prune -> sparsify -> QAT, with this model's input size."""
    config = json.loads((CONFIGS / "digits_prune_sparsify_int8.json").read_text())
    config["input_info"] = {"sample_size": sample_size}
    return config


def combined_digits(tmp: Path, dense: nn.Module, loaders: tuple[DataLoader[Any], DataLoader[Any]]) -> dict[str, Any]:
    train, test = loaders
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(dense), combined_config([1, 1, 8, 8]), init_data=train)
    fine_tune(ctrl, model, train, FINE_TUNE_EPOCHS)
    stats = ctrl.statistics()
    path = tmp / "digits_combined_int8.onnx"
    ctrl.export_model(str(path))
    logits, _ = predict(model, test)
    xs = torch.cat([b for b, _ in test]).numpy()
    got = _ort_run(_session(path), xs)
    return {
        "model": "digits ResNet 16-32-64: prune 40% FLOPs + 50% sparsity + INT8 QAT",
        "accuracy": evaluate(model, test), "onnx_accuracy": ort_accuracy(path, test),
        "onnx_argmax_agreement_vs_torch": float((got.argmax(1) == logits.argmax(1).numpy()).mean()),
        "flops_removed": stats.filter_pruning.flops_pruning_level,
        "sparsity_of_sparsified_layers": stats.magnitude_sparsity.layers_level,
    }


def combined_cifar(tmp: Path) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    dense = resnet_with_statistics(gen)
    x = random_images(64, gen)
    calib = [(random_images(64, gen), torch.zeros(64, dtype=torch.long)) for _ in range(4)]
    ctrl, _ = nnc.create_compressed_model(copy.deepcopy(dense), combined_config([1, 3, 32, 32]), init_data=calib)
    for _ in range(3):  # the pruning and sparsity schedules reach their targets
        ctrl.scheduler.epoch_step()
    int8_only = {"input_info": {"sample_size": [1, 3, 32, 32]},
                 "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 256}}}}
    qctrl, _ = nnc.create_compressed_model(copy.deepcopy(dense), int8_only, init_data=calib)
    paths = {"fp32": tmp / "cifar_fp32.onnx", "int8": tmp / "cifar_int8.onnx", "combined": tmp / "cifar_combined.onnx"}
    export_onnx(dense, ((x[:1],), {}), paths["fp32"])
    qctrl.export_model(str(paths["int8"]))
    ctrl.export_model(str(paths["combined"]))
    lat = latency_pair(paths, x.numpy())
    return {
        "model": "CIFAR ResNet 32-64-128, batch 64: prune 40% FLOPs + 50% sparsity + INT8",
        "flops_removed": ctrl.statistics().filter_pruning.flops_pruning_level,
        "ort_fp32_ms": lat["fp32"], "ort_int8_ms": lat["int8"], "ort_combined_ms": lat["combined"],
        "combined_over_fp32": lat["combined"] / lat["fp32"], "int8_over_fp32": lat["int8"] / lat["fp32"],
        "combined_bytes_over_fp32": paths["combined"].stat().st_size / paths["fp32"].stat().st_size,
    }


def main() -> None:
    torch.set_num_threads(THREADS)
    loaders = digits_loaders(batch_size=64, seed=0)
    dense = train_dense(seed=0, loaders=loaders, factory=digits_resnet)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        digits, cifar, exact = digits_case(tmp, dense, loaders), cifar_case(tmp, 16), cifar_case(tmp, 1)
        widths = widths_case(tmp)
        both_digits, both_cifar = combined_digits(tmp, dense, loaders), combined_cifar(tmp)

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    rows = [
        ("groups pruned / groups", f"{digits['groups_pruned']} / {digits['groups']}",
         f"{cifar['groups_pruned']} / {cifar['groups']}"),
        ("FLOPs removed (controller)", pct(digits["flops_removed_controller"]), pct(cifar["flops_removed_controller"])),
        ("FLOPs removed (recounted, stripped model)", pct(digits["flops_removed_recounted"]),
         pct(cifar["flops_removed_recounted"])),
        ("parameters removed", pct(digits["params_removed"]), pct(cifar["params_removed"])),
        ("accuracy dense -> pruned (torch / ONNX)",
         f"{pct(digits['dense_accuracy'])} -> {pct(digits['pruned_accuracy'])} / "
         f"{pct(digits['pruned_onnx_accuracy'])}", "-"),
        ("training step, masks / plain", f"{digits['step_ratio']:.2f}", "-"),
        ("onnxruntime latency, pruned / dense",
         f"{digits['ort_ratio']:.2f} ({digits['ort_pruned_ms']:.2f} / {digits['ort_dense_ms']:.2f} ms, batch 256)",
         f"{cifar['ort_ratio']:.2f} ({cifar['ort_pruned_ms']:.1f} / {cifar['ort_dense_ms']:.1f} ms, batch 64)"),
    ]
    rows.append(("CIFAR ResNet, exact counts (channel_multiple 1): FLOPs removed / latency pruned / dense", "-",
                 f"{pct(exact['flops_removed_recounted'])} / {exact['ort_ratio']:.2f}"))
    print(format_table(("filter_pruning, 40% FLOPs target", "digits ResNet (real data)",
                        "CIFAR ResNet (random weights)"), rows))
    print(format_table(("plain ResNet widths (unpruned)", "FLOPs / 32-64-128", "onnxruntime latency / 32-64-128"),
                       [("-".join(map(str, r["widths"])), f"{r['flops_share']:.2f}", f"{r['latency_share']:.2f}")
                        for r in widths]))
    combined_rows = [
        ("digits: accuracy dense -> combined (torch / INT8 ONNX)",
         f"{pct(digits['dense_accuracy'])} -> {pct(both_digits['accuracy'])} / {pct(both_digits['onnx_accuracy'])}"),
        ("digits: FLOPs removed / sparsity of sparsified layers",
         f"{pct(both_digits['flops_removed'])} / {pct(both_digits['sparsity_of_sparsified_layers'])}"),
        ("CIFAR ResNet: onnxruntime latency, combined / FP32",
         f"{both_cifar['combined_over_fp32']:.2f} ({both_cifar['ort_combined_ms']:.1f} / "
         f"{both_cifar['ort_fp32_ms']:.1f} ms)"),
        ("CIFAR ResNet: onnxruntime latency, INT8 only / FP32", f"{both_cifar['int8_over_fp32']:.2f}"),
        ("CIFAR ResNet: ONNX bytes, combined / FP32", f"{both_cifar['combined_bytes_over_fp32']:.2f}"),
    ]
    print(format_table(("prune -> sparsify -> QAT -> INT8 ONNX, one config", "value"), combined_rows))
    print(json.dumps({"benchmark": "pruning", "digits": digits, "cifar": cifar, "cifar_exact_counts": exact,
                      "widths": widths, "combined_digits": both_digits, "combined_cifar": both_cifar}))


if __name__ == "__main__":
    main()
