"""Trains a group of same-shape cache candidates together: one jitted, vmapped optax step.

A group is one (position, variant) pair; its members differ in seed and learning rate. Their
parameters and optimiser states are stacked along a leading axis and every member sees the
same batches, so one compiled step trains them all. The looped form (one member at a time,
same step, same batches) exists for the equality test and the benchmark.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from gati_jax import sharding
from gati_jax.caches.selector import (
    NUM_FEATURES,
    Selector,
    fixed_selector_params,
    make_scorer,
    selector_features,
)
from gati_jax.caches.variants import Predictor, VariantSpec


@dataclasses.dataclass(frozen=True)
class HeadTraining:
    """Hyper-parameters shared by every member of a group."""

    epochs: int = 4
    batch_size: int = 128
    temperature: float = 2.0
    distill_weight: float = 0.7
    selector_epochs: int = 30
    selector_learning_rate: float = 1e-2
    selector_hidden: int = 16
    # Predictors and selectors train for at least this many steps (their epochs raised).
    min_steps: int = 0


def raised_epochs(epochs: int, min_steps: int, num_examples: int, batch_size: int) -> int:
    """``epochs`` over ``num_examples`` in batches of ``batch_size`` (the last partial batch
    dropped), raised until at least ``min_steps`` steps run."""
    per_epoch = max(1, num_examples // max(1, min(batch_size, num_examples)))
    return max(int(epochs), -(-int(min_steps) // per_epoch))


def _adam(learning_rate):
    # The learning rate lives in the optimiser state, so members can differ under vmap.
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def distillation_loss(
    logits: jax.Array, teacher_logits: jax.Array, temperature: float, distill_weight: float
) -> jax.Array:
    """Mix of KL to the base network's softened logits and CE to its argmax answer."""
    soft_teacher = jax.nn.softmax(teacher_logits / temperature)
    kl = optax.kl_divergence(jax.nn.log_softmax(logits / temperature), soft_teacher)
    hard = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.argmax(teacher_logits, -1))
    return jnp.mean(distill_weight * temperature**2 * kl + (1 - distill_weight) * hard)


def make_predictor_fns(
    spec: VariantSpec, num_classes: int, input_shape: tuple[int, ...], hp: HeadTraining
) -> tuple[Callable, Callable]:
    """(init(key, lr) -> (params, opt), step(params, opt, x, teacher)) for one member."""
    predictor = Predictor(spec, num_classes)

    def init(key, learning_rate):
        params = predictor.init(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]
        return params, _adam(learning_rate).init(params)

    def step(params, opt_state, x, teacher):
        loss, grads = jax.value_and_grad(
            lambda p: distillation_loss(
                predictor.apply({"params": p}, x), teacher, hp.temperature, hp.distill_weight
            )
        )(params)
        # The learning rate stored in opt_state overrides this placeholder.
        updates, opt_state = _adam(0.0).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return init, step


def make_selector_fns(hp: HeadTraining) -> tuple[Callable, Callable]:
    """(init(key) -> (params, opt), step(params, opt, features, agree)) for one member."""
    selector = Selector(hp.selector_hidden)
    tx = optax.adam(hp.selector_learning_rate)

    def init(key):
        params = selector.init(key, jnp.zeros((1, NUM_FEATURES), jnp.float32))["params"]
        return params, tx.init(params)

    def step(params, opt_state, features, agree):
        def loss_fn(p):
            logit = selector.apply({"params": p}, features)
            return optax.sigmoid_binary_cross_entropy(logit, agree).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return init, step


SELECTOR_BATCH_SIZE = 256


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches of one epoch (the last partial batch dropped), a function of (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    batch_size = min(batch_size, num_examples)
    return [order[i : i + batch_size] for i in range(0, num_examples - batch_size + 1, batch_size)]


def train_predictors(
    spec: VariantSpec,
    num_classes: int,
    features: np.ndarray,
    teacher_logits: np.ndarray,
    seeds: np.ndarray,
    learning_rates: np.ndarray,
    hp: HeadTraining,
    *,
    vectorised: bool = True,
    data_seed: int = 0,
    desc: str = "",
    mesh: Any = None,
) -> tuple[Any, np.ndarray]:
    """Trains one predictor per (seed, lr) member; returns stacked params and final losses.

    With a ``mesh`` (gati_jax/sharding.py) each batch is split over its data axis and the
    members over its model axis; the step is the same program.
    """
    fns = _compiled_predictor_fns(spec.predictor, num_classes, tuple(features.shape[1:]), hp)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    lrs = jnp.asarray(learning_rates, jnp.float32)
    epochs = raised_epochs(hp.epochs, hp.min_steps, len(features), hp.batch_size)
    batches = [
        b
        for epoch in range(epochs)
        for b in epoch_batches(len(features), hp.batch_size, data_seed, epoch)
    ]
    if vectorised:
        params, opt_state = fns["vinit"](keys, lrs)
        if mesh is not None:
            params, opt_state = sharding.shard_members(mesh, (params, opt_state))
        losses = None
        for batch in tqdm(batches, desc=desc or f"predictors {spec.name}", leave=False):
            x, teacher = features[batch], teacher_logits[batch]
            if mesh is not None:
                x, teacher = sharding.shard_batch(mesh, x), sharding.shard_batch(mesh, teacher)
            params, opt_state, losses = fns["vstep"](params, opt_state, x, teacher)
        return params, np.asarray(losses)
    # Reference path: the same step, one member at a time.
    members, final = [], []
    for member in range(len(seeds)):
        params, opt_state = fns["init"](keys[member], lrs[member])
        loss = None
        for batch in batches:
            params, opt_state, loss = fns["step"](
                params, opt_state, features[batch], teacher_logits[batch]
            )
        members.append(params)
        final.append(loss)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *members), np.asarray(final)


@functools.cache
def _compiled_predictor_fns(
    spec: VariantSpec, num_classes: int, input_shape: tuple[int, ...], hp: HeadTraining
) -> dict[str, Callable]:
    # Cached so that groups of the same shape (and benchmark repeats) reuse compilations.
    init, step = make_predictor_fns(spec, num_classes, input_shape, hp)
    return {
        "vinit": jax.jit(jax.vmap(init)),
        "vstep": jax.jit(jax.vmap(step, in_axes=(0, 0, None, None)), donate_argnums=(0, 1)),
        "init": jax.jit(init),
        "step": jax.jit(step),
    }


def predictor_logits(
    spec: VariantSpec,
    num_classes: int,
    stacked_params: Any,
    features: np.ndarray,
    batch_size: int = 1000,
) -> np.ndarray:
    """Logits of every member on every example: (members, N, classes)."""
    apply = _stacked_predictor_apply(spec.predictor, num_classes)
    # Every chunk one shape (the last padded): a shorter last chunk compiled the predictor once
    # more for every variant and activation shape the planner scores.
    size = min(batch_size, len(features))
    chunks = []
    for i in range(0, len(features), size):
        chunk = features[i : i + size]
        short = size - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
        chunks.append(np.asarray(apply(stacked_params, chunk))[:, : size - short])
    return np.concatenate(chunks, axis=1)


@functools.cache
def _stacked_predictor_apply(spec: VariantSpec, num_classes: int) -> Callable:
    predictor = Predictor(spec, num_classes)
    return jax.jit(jax.vmap(lambda p, x: predictor.apply({"params": p}, x), in_axes=(0, None)))


@functools.cache
def _compiled_selector_fns(hp: HeadTraining) -> dict[str, Callable]:
    init, step = make_selector_fns(hp)
    return {
        "vinit": jax.jit(jax.vmap(init)),
        "vstep": jax.jit(jax.vmap(step), donate_argnums=(0, 1)),
        "features": jax.jit(jax.vmap(selector_features)),
    }


@functools.cache
def _compiled_scorer(kind: str, hidden: int) -> Callable:
    return jax.jit(jax.vmap(make_scorer(kind, hidden)))


def train_selectors(
    member_logits: np.ndarray, base_predictions: np.ndarray, seed: int, hp: HeadTraining
) -> Any:
    """Trains one selector per member on its own predictor's outputs; returns stacked params."""
    fns = _compiled_selector_fns(hp)
    members = member_logits.shape[0]
    features = fns["features"](jnp.asarray(member_logits))
    agree = (member_logits.argmax(-1) == base_predictions[None]).astype(np.float32)
    params, opt_state = fns["vinit"](jax.random.split(jax.random.key(seed), members))
    epochs = raised_epochs(hp.selector_epochs, hp.min_steps, features.shape[1], SELECTOR_BATCH_SIZE)
    for epoch in range(epochs):
        for batch in epoch_batches(features.shape[1], SELECTOR_BATCH_SIZE, seed, epoch):
            params, opt_state, _ = fns["vstep"](
                params, opt_state, features[:, batch], agree[:, batch]
            )
    return params


def fixed_selectors(kind: str, members: int, hidden: int) -> Any:
    """Stacked parameters of ``members`` selectors of a fixed kind (caches/selector.py)."""
    params = fixed_selector_params(kind, hidden)
    return jax.tree.map(lambda a: np.repeat(a[None], members, axis=0), params)


def selector_scores(
    stacked_params: Any, member_logits: np.ndarray, hp: HeadTraining, kind: str
) -> np.ndarray:
    """Probabilities of agreement by selectors of ``kind`` for every member and example:
    (members, N), computed as the router computes them (caches/selector.py)."""
    scorer = _compiled_scorer(kind, hp.selector_hidden)
    return np.asarray(scorer(stacked_params, jnp.asarray(member_logits)))
