"""Pure training and evaluation steps over explicit state; callers jit them."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gati_jax import data
from gati_jax.models import StagedNetwork


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs to continue bit for bit."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    # Running [loss sum, correct, count] of the current epoch: a run resumed mid-epoch then
    # reports the same epoch averages as an uninterrupted one.
    epoch_sums: jax.Array

    @property
    def variables(self) -> dict[str, Any]:
        """Inference variables of the staged network."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(
    network: StagedNetwork, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    """Initialises parameters, batch statistics and optimiser state."""
    variables = network.init(rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        epoch_sums=jnp.zeros((3,), jnp.float32),
    )


def train_step(
    network: StagedNetwork,
    tx: optax.GradientTransformation,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    rng: jax.Array,
    mean: jax.Array,
    std: jax.Array,
    flip: bool,
    crop_padding: int,
) -> TrainState:
    """One SGD step on a batch of raw uint8 images: augment, normalise, forward, update."""
    inputs = data.normalize(data.augment(rng, images, flip, crop_padding), mean, std)

    def loss_fn(params):
        logits, new_stats = network.apply_train(
            {"params": params, "batch_stats": state.batch_stats}, inputs
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    sums = state.epoch_sums + jnp.array(
        [loss * labels.shape[0], correct, labels.shape[0]], jnp.float32
    )
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_stats,
        opt_state=opt_state,
        epoch_sums=sums,
    )
