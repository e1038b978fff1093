"""Bad input gets a clear error: config keys and values, data set and model names, images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from conftest import assert_config_rejects, tiny_config

from gati_jax import data
from gati_jax.config import ConfigError, base_config, validate_config
from gati_jax.config_checks import flat_config
from gati_jax.inference import BaseModel, predict_logits
from gati_jax.input_checks import check_images
from gati_jax.models import build_network

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate():
    import importlib.util

    for path in sorted((ROOT / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        validate_config(module.get_config())


def test_locked_base_rejects_unknown_key_at_once():
    config = base_config()
    with pytest.raises(AttributeError, match="learning_rte"):
        config.train.learning_rte = 0.1


def test_flat_config_gives_every_leaf_one_dotted_key():
    stored = {"seed": 0, "train": {"epochs": 3, "sizes": [1, 2]}, "a": {"b": {"c": None}, "d": {}}}
    assert flat_config(stored) == {
        "seed": 0,
        "train.epochs": 3,
        "train.sizes": [1, 2],
        "a.b.c": None,
    }
    # config.json as written: nested sections flatten down to their leaves.
    base = base_config()
    flat = flat_config(json.loads(base.to_json()))
    assert flat["train.learning_rate"] == base.train.learning_rate
    assert flat["data.synthetic.image_size"] == base.data.synthetic.image_size
    assert {key.split(".")[0] for key in flat} == set(base.keys())


def test_validate_names_unknown_keys_and_bad_values():
    config = ml_collections.ConfigDict(base_config().to_dict())
    config.train.learnig_rate = 0.1
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.learnig_rate'"):
        validate_config(config)
    cases = {
        ("data", "name"): "mnist2",
        ("model", "name"): "resnet19",
        ("train", "schedule"): "linear",
        ("train", "momentum"): 1.5,
        ("train", "epochs"): 0,
        ("data", "validation_size"): -1,
    }
    for (section, key), value in cases.items():
        assert_config_rejects(section, key, value)


def test_unknown_data_set_and_model_names():
    with pytest.raises(ValueError, match="unknown"):
        data.load_dataset(
            ml_collections.ConfigDict(dict(tiny_config().data.to_dict(), name="imagenet"))
        )
    with pytest.raises(ValueError, match="unknown network 'resnet19'.*available"):
        build_network(
            ml_collections.ConfigDict(dict(name="resnet19", width=4, hidden_sizes=())), (8, 8, 1), 4
        )


def test_command_line_override_of_unknown_key_fails():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train_base.py"),
            f"--config={ROOT / 'configs' / 'synthetic_mlp.py'}",
            "--workdir=/tmp/unused",
            "--config.train.learnig_rate=0.1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'learnig_rate' (did you mean 'learning_rate'?); "
        "see gati_jax/config.py for the schema"
    )


def test_check_images_rejects_bad_batches():
    good = np.zeros((2, 8, 8, 1), np.uint8)
    assert check_images(good, (8, 8, 1)) is not None
    with pytest.raises(ValueError, match=r"shape \(batch, 8, 8, 1\)"):
        check_images(np.zeros((2, 8, 8, 3), np.uint8), (8, 8, 1))
    with pytest.raises(ValueError, match="empty batch"):
        check_images(np.zeros((0, 8, 8, 1), np.uint8), (8, 8, 1))
    with pytest.raises(TypeError, match="dtype int64"):
        check_images(np.zeros((2, 8, 8, 1), np.int64), (8, 8, 1))
    bad = np.zeros((3, 8, 8, 1), np.float32)
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf values \(1 of 3 images\)$"):
        check_images(bad, (8, 8, 1))
    overflow = np.zeros((3, 8, 8, 1), np.float64)
    overflow[2, 0, 0, 0] = 1e300  # finite in float64, Inf in float32
    with pytest.raises(ValueError, match=r"\(1 of 3 images\) after the cast from float64"):
        check_images(overflow, (8, 8, 1))
    with pytest.raises(TypeError, match="array"):
        check_images([[1, 2]], (8, 8, 1))


def test_predict_logits_validates_and_matches_network():
    config = tiny_config()
    dataset = data.load_dataset(config.data)
    network = build_network(config.model, dataset.image_shape, dataset.num_classes)
    variables = network.init(jax.random.key(0))
    model = BaseModel(network, variables, dataset.mean, dataset.std, {})
    images = dataset.test.images[:7]
    logits = predict_logits(model, images, batch_size=4)
    expected = network.apply(variables, data.normalize(images, dataset.mean, dataset.std))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    nan_images = images.astype(np.float32)
    nan_images[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_logits(model, nan_images)


def test_every_shipped_config_loads_and_validates():
    import importlib.util

    names = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
    assert "bounded_miss.py" in names and "default.py" in names
    for name in names:
        spec = importlib.util.spec_from_file_location(name[:-3], ROOT / "configs" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        validate_config(module.get_config())
    spec = importlib.util.spec_from_file_location("bounded", ROOT / "configs/bounded_miss.py")
    bounded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bounded)
    assert bounded.get_config().planner.max_miss_overhead == pytest.approx(0.10)
    assert bounded.get_config("0.15").planner.max_miss_overhead == pytest.approx(0.15)
    with pytest.raises(ValueError, match="fraction"):
        bounded.get_config("ten")
