"""Weights & Biases as a second sink of the training scalars (`using_wandb=True`, utils.monitor.Scalars).

The offline test needs the optional `wandb` package and skips without it; the missing-package error runs
everywhere.
"""

import json
import struct
import sys
import time

import pytest

from utils.errors import UserError
from utils.monitor import Scalars

WANDB_CONFIG = {"wandb_project": "transface-test", "wandb_entity": "", "network": "vit_nano", "lr": 1e-3}


def test_using_wandb_without_the_package_is_one_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(UserError, match="pip install wandb"):
        Scalars(tmp_path, tensorboard=False, wandb_config=WANDB_CONFIG)


def _tensorboard_scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {(tag, event.step): event.value for tag in events.Tags()["scalars"] for event in events.Scalars(tag)}


def _wandb_records(run_file) -> list:
    """The `Record` protobufs of an offline `.wandb` file: W&B's 7-byte header, then LevelDB log blocks of
    32 KiB holding records (7-byte header: CRC, length, type); a record still being written is left out."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending, records = run_file.read_bytes(), 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4) and position <= len(data):  # FULL or LAST, wholly on disk: the record is complete
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def _finished_records(wandb_folder, timeout: float = 60.0) -> list:
    """The records of the one offline run under `wandb_folder`, once they end with the run's `exit` record.
    run.finish() returns before W&B's service process has written the run to disk (the file was found still
    its bare 7-byte header), so this waits: wandb.teardown() stops the service, which closes the file, then
    the exit record is awaited (for `timeout` seconds at most)."""
    import wandb

    wandb.teardown()
    deadline = time.monotonic() + timeout
    while True:
        run_files = list(wandb_folder.glob("offline-run-*/run-*.wandb"))
        assert len(run_files) <= 1, run_files
        records = _wandb_records(run_files[0]) if run_files else []
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"no run in {wandb_folder} has its exit record {timeout:.0f} s after finish"
        time.sleep(0.1)


def _wandb_history(records) -> dict:
    """(name, step) -> value of the history records."""
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            step = record.history.step.num
            for item in record.history.item:
                name = item.key or "/".join(item.nested_key)  # "train/loss" may come as ["train", "loss"]
                if not name.startswith("_"):  # W&B's own _step, _runtime, _timestamp
                    history[name, step] = json.loads(item.value_json)
    return history


def test_wandb_offline_gets_the_same_scalars_as_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is optional (pip install wandb); this test checks the W&B sink")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # files written locally, nothing sent
    monkeypatch.setenv("WANDB_SILENT", "true")
    scalars = Scalars(tmp_path, tensorboard=True, wandb_config=WANDB_CONFIG)
    scalars.add({"train/loss": 41.25, "train/lr": 1.5e-4}, 10)
    scalars.add({"train/loss": 40.5, "train/lr": 3.0e-4}, 20)
    scalars.add({"verification/lfw/accuracy": 0.875}, 20)
    scalars.close()
    wandb_history = _wandb_history(_finished_records(tmp_path / "wandb"))
    tensorboard = _tensorboard_scalars(tmp_path / "tensorboard")
    assert len(tensorboard) == 5
    assert wandb_history.keys() == tensorboard.keys()
    for key, value in tensorboard.items():  # TensorBoard stores float32
        assert wandb_history[key] == pytest.approx(value, rel=1e-6), key
