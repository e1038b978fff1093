"""Metrics land in JSON lines and in TensorBoard event files, readable back."""

from __future__ import annotations

import json
import struct

from tensorboardX.proto import event_pb2

from gati_jax.metric_writer import MetricWriter


def _scalars(directory):
    """(tag, step, value) of every scalar in the event files (TFRecord framing)."""
    found = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, event.step, round(value.simple_value, 4)))
    return found


def test_rows_reach_jsonl_and_tensorboard(tmp_path):
    writer = MetricWriter(tmp_path, "training")
    writer.rewrite(
        [
            {"epoch": 1, "step": 10, "val_accuracy": 0.5, "note": "x"},
            {"epoch": 2, "step": 20, "val_accuracy": 0.75, "loss": float("nan")},
        ],
        step_key="step",
    )
    writer.write(30, {"step": 30, "val_accuracy": 0.8})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[0]["note"] == "x"
    scalars = _scalars(tmp_path / "tensorboard" / "training")
    assert [(s, v) for t, s, v in scalars if t == "val_accuracy"] == [
        (10, 0.5),
        (20, 0.75),
        (30, 0.8),
    ]
    assert not any(t == "loss" for t, _, _ in scalars)  # NaN is not a scalar to plot
