"""The project's anchors: the shipped Fashion-MNIST networks load and keep their accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

from gati_jax import data
from gati_jax.config import base_config
from gati_jax.inference import evaluate
from gati_jax.training import load_base_model

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
CHECKPOINT = CHECKPOINTS / "fashion_mnist_resnet18"
# (folder, network, stages, least test accuracy, most bytes on disk)
SHIPPED = [
    ("fashion_mnist_resnet18", "resnet18", 10, 0.92, 5 * 1024 * 1024),
    ("fashion_mnist_resnet56", "resnet56", 29, 0.93, 4 * 1024 * 1024),
]


@pytest.mark.parametrize("folder, name, stages, accuracy, max_bytes", SHIPPED)
def test_shipped_checkpoint_is_small(folder, name, stages, accuracy, max_bytes):
    size = sum(p.stat().st_size for p in (CHECKPOINTS / folder).rglob("*") if p.is_file())
    assert 0 < size <= max_bytes


@pytest.mark.slow
@pytest.mark.parametrize("folder, name, stages, accuracy, max_bytes", SHIPPED)
def test_shipped_checkpoint_keeps_its_accuracy_on_real_test_set(
    folder, name, stages, accuracy, max_bytes
):
    model = load_base_model(CHECKPOINTS / folder)
    assert model.network.name == name and model.network.input_shape == (28, 28, 1)
    assert model.network.num_stages == stages
    data_config = base_config().data  # the real Fashion-MNIST, found where CI installs it
    dataset = data.load_dataset(data_config)
    result = evaluate(model.network, model.variables, model.mean, model.std, dataset.test)
    assert result["examples"] == 10_000
    assert result["accuracy"] >= accuracy
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
