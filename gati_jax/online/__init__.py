"""Online learning: caches that keep training on the request stream, with an accuracy guard."""

from gati_jax.online.guard import AccuracyGuard
from gati_jax.online.learner import OnlineLearner, OnlineSettings
from gati_jax.online.updates import OnlineTrainer, UpdateSettings
from gati_jax.online.window import ReplayWindow

__all__ = [
    "AccuracyGuard",
    "OnlineLearner",
    "OnlineSettings",
    "OnlineTrainer",
    "ReplayWindow",
    "UpdateSettings",
]
