"""Examples that need the internet say so at once, in one line; their device defaults to CUDA
only when there is one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tl_universality.core import environment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["reproduce_paper.py", "training_checkpoints.py"])
def test_hub_examples_stop_at_once_without_the_internet(name):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(EXAMPLES.parent)}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{name} downloads models from huggingface.co, which cannot be reached" in lines[0]


def test_hub_check_fails_when_the_connection_fails(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert environment.hub_reachable() is False
    with pytest.raises(SystemExit, match="cannot be reached"):
        environment.require_hub("x.py")


def test_device_defaults_to_cuda_only_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert environment.default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert environment.default_device() == "cuda"


def test_screened_example_runs_offline(tiny_family):
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(EXAMPLES / "screened_correlation.py"), "--max-tokens", "20000",
           "--candidates", "4", "--tol", "0.05"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "certified:" in proc.stdout and "universal sets agree: True" in proc.stdout
    assert "exhaustive run with standard_errors=True: 0.0" in proc.stdout
    assert "all agree with the exhaustive run: True" in proc.stdout
