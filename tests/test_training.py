"""Base training: it learns, writes checkpoints and metrics, and resumes exactly after kill -9."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
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


def test_metrics_reach_tensorboard_and_a_resume_keeps_the_jsonl_rows(tmp_path):
    config = tiny_config(epochs=3)
    first = train_and_evaluate(config, str(tmp_path))
    assert list((tmp_path / "tensorboard" / "metrics").glob("events.out.tfevents.*"))
    before = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert before == first["history"]
    # Back to step 28 (epoch 3 unfinished), as a kill would leave it: the JSONL still holds
    # epoch 3's row, which the resume must replace, not append to.
    shutil.rmtree(tmp_path / "checkpoints" / "30")
    resumed = train_and_evaluate(config, str(tmp_path))
    after = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert after == resumed["history"]
    assert [row["epoch"] for row in after] == [1, 2, 3]
    assert after[:2] == before[:2]  # restored from the checkpoint as written
    for key in ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert after[2][key] == pytest.approx(before[2][key], rel=1e-5), key


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


# --- Defaults that scale with the data: min_steps, late config.json, old runs resume ----------


def test_min_steps_raises_the_epochs_only_where_they_run_fewer_steps():
    from gati_jax.training.optim import epoch_schedule

    # The shipped Fashion-MNIST configs (429 steps an epoch) run as they always did.
    for epochs, steps in ((8, 3432), (10, 4290)):
        schedule = epoch_schedule(epochs, 2000, 429)
        assert (schedule.epochs, schedule.total_steps, schedule.eval_every) == (epochs, steps, 1)
    # 700 training examples in batches of 128: 5 steps an epoch, raised to 400 epochs and
    # evaluated every 50, the 8 evaluations train.epochs asked for.
    small = epoch_schedule(8, 2000, 5)
    assert (small.epochs, small.total_steps, small.eval_every) == (400, 2000, 50)
    assert [e + 1 for e in range(400) if small.evaluates_after(e)] == list(range(50, 401, 50))
    assert epoch_schedule(8, 0, 5).epochs == 8


def test_a_run_raised_by_min_steps_says_so_and_evaluates_train_epochs_times(tmp_path, caplog):
    caplog.set_level("INFO")
    out = train_and_evaluate(tiny_config(epochs=2, min_steps=55), str(tmp_path))
    # 500 examples in batches of 50: 10 steps an epoch, raised to 6 epochs (60 steps).
    assert [(row["epoch"], row["step"]) for row in out["history"]] == [(3, 30), (6, 60)]
    assert out["final"]["epochs"] == 6 and out["final"]["steps"] == 60
    assert any(
        "train.min_steps=55" in r.getMessage() and "running 6 epochs (60 steps)" in r.getMessage()
        for r in caplog.records
    )
    # Resumable like any run: the same command finds it finished.
    again = train_and_evaluate(tiny_config(epochs=2, min_steps=55), str(tmp_path))
    assert int(again["state"].step) == 60


def test_a_run_that_fails_on_its_input_leaves_nothing_that_locks_its_workdir(tmp_path):
    bad = tiny_config(epochs=1)
    bad.data.validation_size = 5000  # the train split has 600 examples
    with pytest.raises(ConfigError, match=r"data\.validation_size=5000.*train split of 600"):
        train_and_evaluate(bad, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()
    fixed = tiny_config(epochs=1)
    assert train_and_evaluate(fixed, str(tmp_path / "run"))["final"]["steps"] == 10


def _config_file(name: str):
    return _load_config_file(ROOT / "configs" / name)


def test_a_run_started_under_the_old_schema_resumes_under_the_new_one(tmp_path):
    """runs/fm_r56 was started before data.validation_size became a fraction and before
    train.min_steps and the data subsets existed: its config.json (a copy in tests/data)
    must still match configs/fashion_mnist_resnet56.py, and the shipped ResNet-18's
    recorded config configs/fashion_mnist_resnet18.py, since both train exactly as then."""
    from gati_jax.jobs.train_base import _check_same_config, training_settings

    old = json.loads((ROOT / "tests" / "data" / "old_schema_config_fm_r56.json").read_text())
    assert "min_steps" not in old["train"] and old["data"]["validation_size"] == 5000
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = _config_file("fashion_mnist_resnet56.py")
    _check_same_config(tmp_path, config, 60000, 429)  # no error: it resumes
    assert (tmp_path / "config.json").read_text() == json.dumps(old)  # and stays as it was
    shipped = json.loads(
        (ROOT / "checkpoints" / "fashion_mnist_resnet18" / "model.json").read_text()
    )["config"]
    documented = _config_file("fashion_mnist_resnet18.py")  # with its documented export_dir
    documented.train.export_dir = "checkpoints/fashion_mnist_resnet18"
    new = json.loads(documented.to_json())
    assert training_settings(shipped, 60000, 429) == training_settings(new, 60000, 429)

    # What would change the trained parameters is still refused, naming it.
    raised = _config_file("fashion_mnist_resnet56.py")
    raised.train.min_steps = 5000  # 12 epochs of 429 steps, not 10
    with pytest.raises(
        ConfigError,
        match=r"epochs run \(train\.epochs, train\.min_steps\) "
        r"\(10 -> 12\)",
    ):
        _check_same_config(tmp_path, raised, 60000, 429)
    subset = _config_file("fashion_mnist_resnet56.py")
    subset.data.train_subset = 1300
    with pytest.raises(ConfigError, match=r"data\.train_subset \(0 -> 1300\)"):
        _check_same_config(tmp_path, subset, 60000, 429)
    smaller = _config_file("fashion_mnist_resnet56.py")
    smaller.data.validation_max = 4000
    with pytest.raises(ConfigError, match=r"validation examples.*\(5000 -> 4000\)"):
        _check_same_config(tmp_path, smaller, 60000, 429)


def test_a_validation_accuracy_still_rising_steeply_at_the_end_is_warned_about():
    from gati_jax.jobs.train_base import still_rising

    def history(*accuracies):
        return [
            {"epoch": i + 1, "step": 10 * (i + 1), "val_accuracy": a}
            for i, a in enumerate(accuracies)
        ]

    assert still_rising(history(0.5, 0.8, 0.9, 0.905), 5000) is None  # converged
    assert still_rising(history(0.9), 5000) is None  # one evaluation: nothing to compare
    warning = still_rising(history(0.15, 0.19, 0.24), 5000)
    assert "still rising steeply" in warning and "0.1900 after epoch 2" in warning
    assert "train.min_steps" in warning
    # A gain within the noise of a small validation split is not a trend.
    assert still_rising(history(0.80, 0.83), 100) is None


def test_your_own_data_and_network_train_with_the_documented_config(tmp_path, monkeypatch):
    """docs/own_data.md's example, shrunk: an .npz of your images and your own Flax stages,
    registered in one call, train with train_base's loop and load back by name."""
    import flax.linen as nn

    from gati_jax.models import register_stages, registry

    monkeypatch.setattr(registry._NETWORKS, "_entries", dict(registry._NETWORKS._entries))
    monkeypatch.setattr(registry, "_OWN_STAGES", set(registry._OWN_STAGES))

    class Block(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            return nn.max_pool(nn.relu(x), (2, 2), (2, 2))

    class Classifier(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x):
            return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))

    register_stages(
        "my_cnn", lambda input_shape, num_classes: [Block(8), Block(16), Classifier(num_classes)]
    )
    # Three classes told apart by brightness: learnable in a few steps.
    rng = np.random.default_rng(0)
    labels = np.arange(900) % 3
    images = np.clip(rng.normal(60 + 70 * labels[:, None, None], 20, (900, 8, 8)), 0, 255)
    np.savez(tmp_path / "my_data.npz", images=images.astype(np.uint8), labels=labels)

    config = tiny_config(epochs=2, batch_size=50, min_steps=40)
    config.data.name, config.data.data_dir = "npz", str(tmp_path / "my_data.npz")
    config.data.validation_size = 0
    config.model.name = "my_cnn"
    out = train_and_evaluate(config, str(tmp_path / "base"))
    # 720 train examples less 360 validation: 7 steps an epoch, raised to 6 epochs.
    assert out["final"]["steps"] == 42 and out["final"]["test_accuracy"] > 0.6
    model = load_base_model(tmp_path / "base" / "model")
    assert model.network.name == "my_cnn" and model.network.num_stages == 3
