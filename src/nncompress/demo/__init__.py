"""A runnable demo on real data: magnitude sparsity of a small CNN on scikit-learn's digits.

:func:`run_demo` (also ``nncompress demo`` on the command line) trains the dense CNN,
sparsifies it to 70% with fine-tuning, exports both to ONNX and checks them in onnxruntime.
The building blocks (data, model, training loop) are in :mod:`nncompress.demo.digits`.

This package needs scikit-learn (the ``test`` extra) for the bundled digits data set.
"""

from nncompress.demo.digits import DigitsCNN, digits_loaders, evaluate, train_dense, train_epoch
from nncompress.demo.run import run_demo, sparsify, sparsity_config

__all__ = ["DigitsCNN", "digits_loaders", "evaluate", "run_demo", "sparsify", "sparsity_config", "train_dense", "train_epoch"]
