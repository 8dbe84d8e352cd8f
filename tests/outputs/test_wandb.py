"""wandb logging, offline: what is logged is read back from the run folder itself."""

from __future__ import annotations

import glob
import json
import struct
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import build_model
from tl_universality.analyses.correlation import CorrelationResult, correlate
from tl_universality.outputs.wandb import WandbProgress, log_results, open_run

wandb = pytest.importorskip("wandb")


def read_records(run_dir: Path, timeout: float = 30.0) -> list:
    """Parse a run's .wandb file (LevelDB-style log of protobuf records), independently of wandb's
    own reader, which its Go core no longer exposes to Python. wandb's core writes the file in the
    background after ``finish()`` returns, so wait for the run's closing ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = _parse(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_dir} never got its exit record")
        time.sleep(0.2)


def _parse(run_dir: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    block, pos, chunks, records = 32768, 7, [], []  # 7-byte file header
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunks.append(data[pos : pos + length])
        pos += length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def history_of(run_dir: Path) -> list[dict]:
    rows = []
    for record in read_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                         for i in record.history.item})  # fmt: skip
    return rows


def summary_of(run_dir: Path) -> dict:
    out = {}
    for record in read_records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out[key] = json.loads(item.value_json)
    return out


@pytest.fixture(scope="module")
def result() -> CorrelationResult:
    toks = torch.randint(1, 64, (16, 16), generator=torch.Generator().manual_seed(0))
    toks[:, 0] = 0
    models = [build_model(seed=s) for s in range(3)]
    return correlate(models[0], models[1:], toks, bos_token_id=0, progress=False)


def test_offline_run_holds_summary_and_tables(tmp_path, result):
    table = pd.DataFrame({"layer": [0, 1], "neuron": [3, 5], "excess_corr": [0.7, 0.2]})
    run = log_results([result, table], out_dir=tmp_path, config={"k": 3})
    assert run is not None
    (run_dir,) = [Path(p) for p in glob.glob(str(tmp_path / "wandb" / "offline-run-*"))]

    summary = summary_of(run_dir)
    frame = result.to_dataframe()
    assert summary["correlation/universal_share"] == pytest.approx(frame["is_universal"].mean())
    assert summary["correlation/median_max_corr"] == pytest.approx(frame["mean_corr"].median())
    for row in result.universal_share().itertuples():
        assert summary[f"correlation/layer_{row.layer}/universal_share"] == pytest.approx(
            row.universal_share
        )
    assert summary["correlation/max_corr/_type"] == "histogram"

    media = run_dir / "files" / "media" / "table"
    tables = {str(p.relative_to(media)): json.loads(p.read_text()) for p in media.rglob("*.json")}
    per_layer = next(t for name, t in tables.items() if "per_layer" in name)
    assert per_layer["columns"][:2] == ["layer", "n_units"]
    assert len(per_layer["data"]) == len(result.universal_share())
    neuron_table = next(t for name, t in tables.items() if name.startswith("table/table_1"))
    assert neuron_table["columns"] == ["layer", "neuron", "excess_corr"]
    np.testing.assert_allclose([r[2] for r in neuron_table["data"]], [0.7, 0.2])
    universal = next(t for name, t in tables.items() if "universal_neurons" in name)
    assert len(universal["data"]) == len(result.universal_neurons())


def run_record(run_dir: Path):
    """The run's ``run`` record: its config, name and group as written to the offline file."""
    runs = [r.run for r in read_records(run_dir) if r.WhichOneof("record_type") == "run"]
    return runs[0]


def test_every_result_gets_its_own_key_and_the_run_its_settings(tmp_path, result):
    """Two tables and a correlation result: every table is in the run with its columns (the
    old logger put every DataFrame under one key, so the last overwrote the others)."""
    neurons = pd.DataFrame({"layer": [0, 1], "neuron": [3, 5], "w_out_norm": [1.5, 2.5]})
    families = pd.DataFrame({"layer": [0], "neuron": [3], "family": ["unigram"]})
    counts = pd.DataFrame({"unigram": [1]}, index=pd.Index([0], name="layer"))
    config = {"models": [{"name": "m0", "fingerprint": "ab12"}], "tokens": "held-out",
              "baseline": "rotation", "versions": {"tl_universality": "0.1.0"}}  # fmt: skip
    assert log_results({"correlation": result, "neuron_table": neurons, "families": families,
                       "family_counts": counts}, out_dir=tmp_path, config=config,
                      name="stats tiny", group="study-1") is not None  # fmt: skip
    (run_dir,) = list((tmp_path / "wandb").glob("offline-run-*"))
    media = run_dir / "files" / "media" / "table"
    tables = {p.relative_to(media).as_posix(): json.loads(p.read_text())
              for p in media.rglob("*.json")}  # fmt: skip

    def table(prefix: str) -> dict:
        (found,) = [t for name, t in tables.items() if name.startswith(prefix + "_")]
        return found

    assert table("table/neuron_table")["columns"] == ["layer", "neuron", "w_out_norm"]
    assert table("table/neuron_table")["data"] == [[0, 3, 1.5], [1, 5, 2.5]]
    assert table("table/families")["columns"] == ["layer", "neuron", "family"]
    assert table("table/family_counts")["columns"] == ["layer", "unigram"]  # the index is kept
    assert table("correlation/per_layer")["columns"][:2] == ["layer", "n_units"]
    record = run_record(run_dir)
    logged = {item.key: json.loads(item.value_json) for item in record.config.update}
    assert logged["models"] == config["models"]
    assert logged["baseline"] == "rotation"
    assert record.display_name == "stats tiny" and record.run_group == "study-1"


def test_run_location_says_how_to_sync(tmp_path, result):
    from tl_universality.outputs.wandb import run_location

    run = log_results(result, out_dir=tmp_path, finish=False)
    where = run_location(run)
    run.finish()
    (run_dir,) = list((tmp_path / "wandb").glob("offline-run-*"))
    assert str(run_dir) in where and f"wandb sync {run_dir}" in where


def test_disabled_mode_writes_nothing(tmp_path, result):
    run = log_results(result, mode="disabled", out_dir=tmp_path)
    assert run is not None
    assert not any(tmp_path.rglob("*.wandb"))


def test_wandb_failure_is_a_warning_and_keeps_the_saved_result(tmp_path, result, monkeypatch):
    saved = result.save(tmp_path / "correlation")

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb backend unavailable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="results on disk are intact"):
        assert log_results(result, out_dir=tmp_path) is None
    again = CorrelationResult.load(saved)
    torch.testing.assert_close(again.excess_correlation, result.excess_correlation)


def test_progress_callback_logs_as_it_goes(tmp_path):
    run = open_run("p", dir=tmp_path)
    toks = torch.randint(1, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    toks[:, 0] = 0
    models = [build_model(seed=s) for s in range(2)]
    correlate(models[0], models[1:], toks, bos_token_id=0, progress=False, batch_size=4,
              callback=WandbProgress(run))  # fmt: skip
    run.finish()
    (run_dir,) = list((tmp_path / "wandb").glob("offline-run-*"))
    logged = [
        row["progress/sequences"] for row in history_of(run_dir) if "progress/sequences" in row
    ]
    assert logged == [4, 8]
