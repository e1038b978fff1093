"""The project's anchor: the shipped Fashion-MNIST ResNet-18 loads and keeps its accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

from gati_jax import data
from gati_jax.config import base_config
from gati_jax.inference import evaluate
from gati_jax.training import load_base_model

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "fashion_mnist_resnet18"


def test_shipped_checkpoint_is_small():
    size = sum(p.stat().st_size for p in CHECKPOINT.rglob("*") if p.is_file())
    assert 0 < size < 5 * 1024 * 1024


@pytest.mark.slow
def test_shipped_checkpoint_reaches_92_percent_on_real_test_set():
    model = load_base_model(CHECKPOINT)
    assert model.network.name == "resnet18" and model.network.input_shape == (28, 28, 1)
    data_config = base_config().data  # the real Fashion-MNIST, found where CI installs it
    dataset = data.load_dataset(data_config)
    result = evaluate(model.network, model.variables, model.mean, model.std, dataset.test)
    assert result["examples"] == 10_000
    assert result["accuracy"] >= 0.92
    # The figure recorded at export time is the one we reproduce.
    assert result["accuracy"] == pytest.approx(model.metadata["metrics"]["test_accuracy"], abs=1e-3)


def test_shipped_system_routes_out_of_the_box_from_any_directory(tmp_path, monkeypatch):
    import numpy as np

    import gati_jax
    from gati_jax.inference import predict_logits

    monkeypatch.chdir(tmp_path)  # paths must not depend on the current directory
    system = gati_jax.load_system(CHECKPOINT, max_group=64)
    dataset = data.load_dataset(base_config().data)
    images = dataset.test.images[:64]
    result = system.route(images.astype(np.float32))
    base = np.argmax(predict_logits(system.model, images), -1)
    last = system.model.network.num_stages - 1
    assert set(np.unique(result.exit_stage)) <= {*system.plan.positions, last}
    assert np.all(result.exit_stage[~result.hit] == last)
    # Misses run the whole network and answer as it does; hits agree at the planned bound.
    np.testing.assert_array_equal(result.answer[~result.hit], base[~result.hit])
    assert result.hit.mean() > 0.3 and (result.answer == base).mean() >= 62 / 64
