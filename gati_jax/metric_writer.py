"""Metrics of long work (base training, online learning) as JSON lines and TensorBoard scalars.

The JSONL file is what the project's own reports read; the TensorBoard event file is for
people who watch a run (``tensorboard --logdir WORKDIR``). Scalars only: a row's numbers
become tags, anything else stays in the JSONL.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes rows of metrics, each at a step, to ``DIR/NAME.jsonl`` and TensorBoard events."""

    def __init__(self, directory: str | os.PathLike, name: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.directory / f"{name}.jsonl"
        self._tensorboard = SummaryWriter(str(self.directory / "tensorboard" / name))

    def write(self, step: int, row: dict[str, Any]) -> None:
        """Appends one row (also logged as scalars at ``step``)."""
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._scalars(step, row)

    def rewrite(self, rows: Iterable[dict[str, Any]], step_key: str) -> None:
        """Writes the JSONL anew from every row (a resumed run never duplicates a line); the
        TensorBoard events get the rows again, which TensorBoard shows as the newest values."""
        rows = list(rows)
        with open(self.jsonl, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for row in rows:
            self._scalars(int(row[step_key]), row)

    def _scalars(self, step: int, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(float(value))
            ):
                self._tensorboard.add_scalar(key, float(value), global_step=step)
        self._tensorboard.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._tensorboard.close()
