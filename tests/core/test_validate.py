"""Validation at the door: bad numbers, devices and paths are errors naming argument, value, fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import build_model
from tl_universality.core.errors import InvalidArgumentError
from tl_universality.core.validate import check_device, check_folder, check_int, check_number
from tl_universality.units.activations import collect_activations


@pytest.mark.parametrize(
    "value, want",
    [(3, 3), (1e6, 1_000_000), (torch.tensor(4), 4), (__import__("numpy").int32(5), 5)],
)
def test_check_int_accepts_whole_numbers(value, want):
    assert check_int("n", value, minimum=1) == want


@pytest.mark.parametrize(
    "value, why",
    [
        ("100", "n='100' is a str, not a number"),
        (True, "n=True is a bool, not a number"),
        (2.5, "n=2.5 is not a whole number"),
        (float("nan"), "n=nan is not a whole number"),
        (0, "n=0 is less than 1"),
        (10**9, "n=1000000000 is more than 100"),
        (None, "n=None is a NoneType"),
    ],
)
def test_check_int_refuses(value, why):
    with pytest.raises(InvalidArgumentError, match=why):
        check_int("n", value, minimum=1, maximum=100)


@pytest.mark.parametrize(
    "value, why",
    [
        (float("nan"), "memory_budget=nan is not a finite number"),
        (float("inf"), "memory_budget=inf is not a finite number"),
        (-1.0, r"memory_budget=-1.0 is out of range. Fix: pass memory_budget > 0"),
        (0, "out of range"),
        ("2GB", "memory_budget='2GB' is a str, not a number"),
    ],
)
def test_check_number_refuses(value, why):
    with pytest.raises(InvalidArgumentError, match=why):
        check_number("memory_budget", value, minimum=0, strict_minimum=True)


def test_errors_are_value_and_type_errors():
    with pytest.raises(ValueError):
        check_int("n", -1, minimum=0)
    with pytest.raises(TypeError):
        check_int("n", "1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match=r"device='cuda' but CUDA is not available"):
        check_device("device", "cuda")
    with pytest.raises(InvalidArgumentError, match="device='cuda:1'"):
        check_device("device", torch.device("cuda:1"))


def test_devices():
    assert check_device("device", "cpu") == torch.device("cpu")
    assert check_device("device", None) is None
    for bad in ("gpu", "cuda:x", 3.5):
        with pytest.raises(InvalidArgumentError, match="is not a torch device"):
            check_device("device", bad)


def test_check_folder(tmp_path):
    file = tmp_path / "ckpt.txt"
    file.write_text("x")
    with pytest.raises(InvalidArgumentError, match=r"checkpoint_dir=.* is a file"):
        check_folder("checkpoint_dir", file)
    assert check_folder("checkpoint_dir", tmp_path / "new") == tmp_path / "new"
    assert check_folder("checkpoint_dir", tmp_path) == tmp_path
    with pytest.raises(InvalidArgumentError, match="is not a path"):
        check_folder("checkpoint_dir", 5)


@pytest.fixture(scope="module")
def model():
    return build_model()


def _tokens():
    t = torch.randint(1, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    t[:, 0] = 0
    return t


@pytest.mark.parametrize(
    "kwargs, why",
    [
        (dict(batch_size=0), "batch_size=0 is less than 1"),
        (dict(batch_size=-3), "batch_size=-3 is less than 1"),
        (dict(start_sequence=-1), "start_sequence=-1 is less than 0"),
        (dict(max_tokens=-8), "max_tokens=-8 is less than 1"),
        (dict(dtype=torch.int64), "dtype=torch.int64 is not a floating-point torch dtype"),
        (dict(device="tpu"), "device='tpu'"),
    ],
)
def test_stream_activations_refuses_bad_numbers(model, kwargs, why):
    with pytest.raises(InvalidArgumentError, match=why):
        collect_activations(model, _tokens(), progress=False, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_stream_activations_on_cuda_without_cuda(model):
    with pytest.raises(InvalidArgumentError, match="device='cuda' but CUDA is not available"):
        collect_activations(model, _tokens(), progress=False, device="cuda")


# Wrongly typed arguments: in the test session jaxtyping + beartype intercept them before the
# function runs, so what users see (no type checker) is checked in a plain interpreter.
_PLAIN = r"""
import json, torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from tl_universality.data.tokens import TensorTokenSource, resolve_tokens
from tl_universality.units.activations import collect_activations

cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=16, act_fn="relu")
model = HookedTransformer(cfg)
tokens = torch.zeros(4, 8, dtype=torch.long)
cases = {
    "max_tokens='100'": lambda: collect_activations(model, tokens, max_tokens="100"),
    "batch_size=2.5": lambda: collect_activations(model, tokens, batch_size=2.5, progress=False),
    "max_tokens=2.5": lambda: resolve_tokens(tokens, model, max_tokens=2.5),
    "seq_len='8'": lambda: resolve_tokens(torch.zeros(20, dtype=torch.long), model, seq_len="8"),
    "bos_token_id=0.5": lambda: resolve_tokens(tokens, model, bos_token_id=0.5),
    "batches(2.5)": lambda: list(TensorTokenSource(tokens, 0).batches(2.5)),
    "limit('16')": lambda: TensorTokenSource(tokens, 0).limit("16"),
    "float tensor": lambda: TensorTokenSource(torch.tensor([[0.0, 1.5]]), 0),
    "bool tensor": lambda: TensorTokenSource(torch.tensor([[True, False]]), 0),
}
out = {}
for name, call in cases.items():
    try:
        call()
        out[name] = ["no error", ""]
    except Exception as err:
        out[name] = [type(err).__name__, str(err)]
print(json.dumps(out))
"""


def test_wrongly_typed_arguments_without_a_type_checker():
    run = subprocess.run(
        [sys.executable, "-c", _PLAIN],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=Path(__file__).parents[2],
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    want = {
        "max_tokens='100'": "max_tokens='100' is a str, not a number",
        "batch_size=2.5": "batch_size=2.5 is not a whole number",
        "max_tokens=2.5": "max_tokens=2.5 is not a whole number",
        "seq_len='8'": "seq_len='8' is a str",
        "bos_token_id=0.5": "bos_token_id=0.5 is not a whole number",
        "batches(2.5)": "batch_size=2.5 is not a whole number",
        "limit('16')": "max_tokens='16' is a str",
        "float tensor": r"tokens[0, 1] = 1.5 is not a whole number",
        "bool tensor": "bool tensor",
    }
    for name, fragment in want.items():
        kind, message = got[name]
        assert kind in ("InvalidArgumentError", "InvalidTokensError"), (name, kind, message)
        assert fragment in message, (name, message)
