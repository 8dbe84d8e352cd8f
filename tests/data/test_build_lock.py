"""Processes that build the same cache entry at once: the second waits, then builds nothing.

Two torchrun ranks on a fresh cache (``torchrun -m tl_universality correlate --family tiny``)
used to train the family twice, into the same folder, and one could read a folder the other was
replacing. The oracle is the count of seeds a process trains, and the weights it returns against
those the first process saved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from tl_universality.core.cache import build_lock
from tl_universality.data.seeds import PRESETS, family_folder, train_seed_family

ROOT = Path(__file__).resolve().parents[2]
CONFIG = PRESETS["tiny"].replace(name="locktest", steps=3, warmup=1, seeds=(0, 1))

# Trains CONFIG into the cache folder argv[1], counting the seeds it trains; prints JSON.
CHILD = """
import json, sys, torch
from tl_universality.data.seeds import PRESETS, train_seed_family
from tl_universality.core import cache
from tl_universality.data.seeds import family as family_module
cache._QUIET_WAIT_S = 0.5  # say at once that it waits
trained, real = [], family_module.train_one
def counting(config, seed, *args, **kwargs):
    trained.append(seed)
    return real(config, seed, *args, **kwargs)
family_module.train_one = counting
config = PRESETS["tiny"].replace(name="locktest", steps=3, warmup=1, seeds=(0, 1))
family = train_seed_family(config, cache_dir=sys.argv[1], progress=True, num_threads=1)
first = family.models[0].W_in.detach().flatten()[:8].tolist()
print(json.dumps({"trained": trained, "first": first}))
"""


def _wait_for(path: Path, text: str, proc: subprocess.Popen, seconds: float = 120) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = path.read_text() if path.exists() else ""
        if text in got or proc.poll() is not None:
            return got
        time.sleep(0.2)
    return path.read_text()


def test_a_second_process_waits_for_the_builder_and_trains_nothing(tmp_path, tiny_tokenizer):
    cache, err = tmp_path / "seeds", tmp_path / "child.err"
    folder = family_folder(CONFIG, cache_dir=cache)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with build_lock(folder):  # this process is "the builder"
        with open(err, "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(cache)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT,
            )  # fmt: skip
        said = _wait_for(err, "waiting for", proc)
        assert proc.poll() is None, f"the child did not wait: {said[-2000:]}"
        assert f"waiting for pid {os.getpid()} on " in said and str(folder) in said
        time.sleep(1.0)
        assert proc.poll() is None and not folder.exists()  # still waiting, nothing written
        built = train_seed_family(CONFIG, cache_dir=cache, progress=False, num_threads=1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.read_text()[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["trained"] == []  # it loaded what this process built
    want = built.models[0].W_in.detach().flatten()[:8]
    assert torch.equal(torch.tensor(got["first"], dtype=want.dtype), want)
    assert "seed 0" not in err.read_text()  # and showed no training bar


def test_without_a_holder_nothing_waits(tmp_path, tiny_tokenizer, capsys):
    train_seed_family(CONFIG, cache_dir=tmp_path, progress=False, num_threads=1)
    assert "waiting" not in capsys.readouterr().err


def test_threads_of_one_process_take_the_lock_in_turn(tmp_path):
    entry, spans = tmp_path / "entry", []

    def hold() -> None:
        with build_lock(entry):
            start = time.monotonic()
            with build_lock(entry):  # re-entrant for the thread that holds it
                time.sleep(0.15)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # never overlap


def test_a_tokenizer_saved_to_a_folder_of_the_callers_leaves_no_lock_file(tmp_path):
    from tl_universality.data.corpus import train_tokenizer

    train_tokenizer(300, folder=tmp_path / "tok", documents=["hello world"] * 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
