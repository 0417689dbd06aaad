"""The ``nncompress`` command line.

::

    nncompress demo [--out-dir runs/demo] [--epochs N] [--finetune-epochs N] [--seed S]

``demo`` trains a small CNN on scikit-learn's digits, sparsifies it to 70% with magnitude
sparsity, exports it to ONNX and checks it in onnxruntime (see :mod:`nncompress.demo.run`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import nncompress


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncompress", description="Compress PyTorch models and export them to ONNX."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {nncompress.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="magnitude sparsity of a small CNN on real data (digits), exported to ONNX",
        description="Train a small CNN on scikit-learn's digits, sparsify it to 70% with magnitude "
        "sparsity and fine-tuning, export dense and sparse models to ONNX, check them in onnxruntime.",
    )
    demo.add_argument("--out-dir", default="runs/demo", help="folder for the ONNX files and summary.json "
                      "(default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=None, help="dense training epochs")
    demo.add_argument("--finetune-epochs", type=_positive_int, default=None,
                      help="fine-tuning epochs under the sparsity schedule")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    :param argv: arguments without the program name (default: ``sys.argv[1:]``).
    :return: the exit status: 0 on success, 1 if the demo's onnxruntime check failed.
    """
    args = _parser().parse_args(argv)
    if args.command == "demo":
        # Imported here: the demo needs scikit-learn, which plain ``nncompress --help`` does not.
        from nncompress.demo.run import run_demo

        kwargs = {k: v for k, v in (("epochs", args.epochs), ("finetune_epochs", args.finetune_epochs))
                  if v is not None}
        figures = run_demo(args.out_dir, seed=args.seed, progress=not args.no_progress, **kwargs)
        return 0 if figures["onnx_agrees"] else 1
    return 2  # unreachable: argparse requires a known command


if __name__ == "__main__":
    raise SystemExit(main())
