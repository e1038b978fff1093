"""``explore_caches.py``'s job: record, explore, save the bank, write the table, JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from gati_jax import data, sharding
from gati_jax.caches.bank import CacheBank, bank_to_json, save_bank
from gati_jax.caches.exploration import ExplorationData, check_design_space, explore
from gati_jax.caches.recording import record_activations
from gati_jax.caches.variants import parse_variant
from gati_jax.config import validate_config
from gati_jax.evaluation import model_data_config
from gati_jax.experiments.plots import plot_exploration
from gati_jax.inference import BaseModel
from gati_jax.tables import format_table
from gati_jax.training.checkpointing import load_base_model


def record_for_exploration(
    model: BaseModel,
    dataset: data.Dataset,
    caches: ml_collections.ConfigDict,
    seed: int,
    mesh: Any = None,
) -> ExplorationData:
    """Records every role's examples in one pass, so all share one per-position pooling
    (batches split over ``mesh``'s data axis when given)."""
    rng = np.random.default_rng([seed, 17])
    n_pred = min(int(caches.predictor_examples), len(dataset.train.labels))
    n_test = min(int(caches.test_examples), len(dataset.test.labels))
    pred_idx = np.sort(rng.choice(len(dataset.train.labels), n_pred, replace=False))
    half = len(dataset.validation.labels) // 2
    if half == 0:
        raise ValueError("the validation split is too small to train and calibrate selectors")
    images = np.concatenate(
        [dataset.train.images[pred_idx], dataset.validation.images, dataset.test.images[:n_test]]
    )
    labels = np.concatenate(
        [dataset.train.labels[pred_idx], dataset.validation.labels, dataset.test.labels[:n_test]]
    )
    last = model.network.num_stages - 1
    positions = tuple(int(p) for p in caches.positions) or tuple(range(last))
    shapes = model.network.activation_shapes()
    bad = [p for p in positions if not 0 <= p < last]
    if bad:
        raise ValueError(f"caches.positions {bad} are not cache positions (0 .. {last - 1})")
    check_design_space(
        [parse_variant(v) for v in caches.variants], {p: shapes[p][1:] for p in positions}
    )
    rec = record_activations(
        model,
        images,
        labels,
        positions=positions,
        max_bytes=int(caches.record_max_bytes),
        batch_size=int(caches.record_batch_size),
        mesh=mesh,
    )
    n_val = len(dataset.validation.labels)
    bounds = np.cumsum([0, n_pred, half, n_val - half, n_test])
    return ExplorationData(*(rec.take(slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])))


def exploration_table(bank: CacheBank) -> list[dict[str, Any]]:
    """One row per position: its best candidate at the first (strictest) precision target."""
    target = f"{bank.info['targets'][0]:g}"
    rows = []
    for position in bank.info["positions"]:
        best = bank.best(position, target)
        m = best.metrics
        rows.append(
            {
                "position": position,
                "best_variant": best.variant,
                "agreement": m["agreement"],
                f"hit_rate@{target}": m[f"hit_rate@{target}"],
                f"hit_agreement@{target}": m[f"hit_agreement@{target}"],
                "lookup_ms": 1e3 * m["lookup_latency_s"],
                "remaining_ms": 1e3 * m["remaining_latency_s"],
                "lookup/remaining": m["latency_fraction"],
                "param_bytes": m["param_bytes"],
                "frontier_size": sum(1 for c in bank.at(position) if c.metrics["on_frontier"]),
            }
        )
    return rows


def run_exploration(config: ml_collections.ConfigDict, workdir: str) -> CacheBank:
    """Records activations, explores the design space, saves bank, JSON, plot; prints the table."""
    validate_config(config)
    sharding.initialize(config.mesh)  # several hosts: join before any device is touched
    workdir_path = Path(workdir).absolute()
    workdir_path.mkdir(parents=True, exist_ok=True)
    model = load_base_model(config.caches.checkpoint)
    dataset = data.load_dataset(model_data_config(model, config.data.data_dir))
    mesh = sharding.make_mesh(config.mesh)
    mesh = mesh if mesh.size > 1 else None  # one device: the plain path, no placement
    recorded = record_for_exploration(model, dataset, config.caches, int(config.seed), mesh)
    bank = explore(model, recorded, config.caches, int(config.seed), mesh).made_for(model)
    save_bank(workdir_path / "cache_bank", bank)
    rows = exploration_table(bank)
    summary = bank_to_json(bank) | {"table": rows}
    (workdir_path / "exploration.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_exploration(bank, workdir_path / "exploration.png")
    print(format_table(rows))
    print(
        f"explored {len(bank.candidates)} candidates in {bank.info['exploration_seconds']} s; "
        f"wrote {workdir_path / 'exploration.json'} and {workdir_path / 'exploration.png'}"
    )
    return bank
