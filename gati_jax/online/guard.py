"""The accuracy guard: per position, audited agreement of hits with a confidence bound.

A position turns off (its threshold becomes +inf) when the evidence is confidently below the
target: the one-sided Wilson *upper* bound of recent agreement is under it, so a few unlucky
audits on a good cache do not switch it off. While off, the cache still runs its lookup and
the outcomes of its would-be hits keep arriving (from requests that run to the end and from
audits); it turns back on once ``recover_samples`` fresh outcomes agree at least at the
target. Evidence is cleared at each switch, so each decision rests on data from after the last.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from gati_jax.caches.selector import wilson_lower_bound


def wilson_upper_bound(successes: int, trials: int, confidence: float) -> float:
    """One-sided Wilson score upper bound of a binomial proportion."""
    return 1.0 - float(wilson_lower_bound(np.asarray(trials - successes),
                                          np.asarray(trials), confidence))


@dataclasses.dataclass
class GuardEvent:
    """A switch of one position, after ``served`` requests."""

    served: int
    position: int
    on: bool
    agreement: float
    samples: int


class AccuracyGuard:
    """Keeps each position's hit agreement at ``target`` or turns the position off."""

    def __init__(self, positions: tuple[int, ...], target: float, window: int = 200,
                 confidence: float = 0.95, min_samples: int = 10, recover_samples: int = 50):
        if not 0 < target <= 1:
            raise ValueError(f"guard target must be in (0, 1], got {target}")
        if min_samples < 1 or recover_samples < 1 or window < max(min_samples, recover_samples):
            raise ValueError("guard needs window >= min_samples, recover_samples >= 1, got "
                             f"{window}, {min_samples}, {recover_samples}")
        self.positions = tuple(positions)
        self.target, self.confidence = float(target), float(confidence)
        self.min_samples, self.recover_samples = int(min_samples), int(recover_samples)
        self.evidence = [collections.deque(maxlen=int(window)) for _ in self.positions]
        self.on = np.ones(len(self.positions), bool)
        self.events: list[GuardEvent] = []

    def record(self, k: int, agree: np.ndarray, served: int) -> None:
        """Adds outcomes (cache answer == base answer) of would-be hits at deployed index ``k``."""
        agree = np.asarray(agree, bool).reshape(-1)
        if not agree.size:
            return
        self.evidence[k].extend(agree.tolist())
        n, good = len(self.evidence[k]), int(sum(self.evidence[k]))
        if self.on[k] and n >= self.min_samples:
            if wilson_upper_bound(good, n, self.confidence) < self.target:
                self._switch(k, False, good, n, served)
        elif not self.on[k] and n >= self.recover_samples and good / n >= self.target:
            self._switch(k, True, good, n, served)

    def _switch(self, k: int, on: bool, good: int, n: int, served: int) -> None:
        self.on[k] = on
        self.events.append(GuardEvent(served, self.positions[k], on, good / n, n))
        self.evidence[k].clear()

    def thresholds(self, nominal: np.ndarray) -> np.ndarray:
        """The thresholds to serve with: ``nominal`` where on, +inf where off."""
        return np.where(self.on, np.asarray(nominal, np.float32), np.inf).astype(np.float32)
