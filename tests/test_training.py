"""Base training: it learns, writes checkpoints and metrics, and resumes exactly after kill -9."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_config

from gati_jax.config import ConfigError
from gati_jax.jobs.train_base import train_and_evaluate
from gati_jax.training import TrainCheckpointer, load_base_model

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_learns_and_writes_outputs(tmp_path):
    out = train_and_evaluate(tiny_config(epochs=3), str(tmp_path))
    history = out["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert out["final"]["test_accuracy"] > 0.6  # 4 classes: chance is 0.25
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert (tmp_path / "training.png").stat().st_size > 0
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [28, 30]
    model = load_base_model(tmp_path / "model")
    assert model.metadata["metrics"]["test_accuracy"] == out["final"]["test_accuracy"]


def test_resume_refuses_a_changed_config(tmp_path):
    train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
    with pytest.raises(ConfigError, match=r"different config.*train\.learning_rate"):
        train_and_evaluate(tiny_config(epochs=1, learning_rate=0.5), str(tmp_path))


def _load_config_file(path: Path):
    spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# A wide MLP: cheap to compile, yet slow enough per step (tens of ms) that the kill lands mid-run.
KILL_OVERRIDES = {
    "model.hidden_sizes": (2048, 2048),
    "train.epochs": 3,
    "train.checkpoint_every_steps": 10,
}


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    config_file = ROOT / "configs" / "synthetic_mlp.py"
    reference_config = _load_config_file(config_file)
    for key, value in KILL_OVERRIDES.items():
        *sections, field = key.split(".")
        target = reference_config
        for section in sections:
            target = target[section]
        target[field] = value
    reference = train_and_evaluate(reference_config, str(tmp_path / "reference"))

    workdir = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train_base.py"),
        f"--config={config_file}",
        f"--workdir={workdir}",
    ] + [f"--config.{k}={v!r}" for k, v in KILL_OVERRIDES.items()]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    deadline = time.time() + 300
    ckpt_dir = workdir / "checkpoints"
    while time.time() < deadline:
        # A sealed checkpoint (its manifest written, gati_jax/integrity.py): the resume
        # below then restores a verified mid-run step, not a fresh start.
        done = (
            [p for p in ckpt_dir.glob("*") if p.name.isdigit() and (p / "manifest.json").is_file()]
            if ckpt_dir.exists()
            else []
        )
        if done:
            break
        if proc.poll() is not None:
            pytest.fail("training finished or crashed before the first checkpoint")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The kill must have interrupted the run, or this test would prove nothing.
    assert not (workdir / "final_metrics.json").exists()
    # The resume starts from a verified mid-run step (a newer, unsealed one is set aside).
    probe = TrainCheckpointer(ckpt_dir, 2)
    assert probe.latest_step() is not None and probe.latest_step() > 0
    probe.close()

    resumed = train_and_evaluate(reference_config, str(workdir))
    assert int(resumed["state"].step) == int(reference["state"].step)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        resumed["state"].params,
        reference["state"].params,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        resumed["state"].batch_stats,
        reference["state"].batch_stats,
    )
    for got, want in zip(resumed["history"], reference["history"]):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert resumed["final"]["test_accuracy"] == reference["final"]["test_accuracy"]
