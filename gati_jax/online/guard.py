"""The accuracy guard: per position, audited agreement of hits with a confidence bound.

A position turns off (its threshold becomes +inf) when the evidence is confidently below the
target: the one-sided Wilson *upper* bound of recent agreement is under it, so a few unlucky
audits on a good cache do not switch it off. While off, the cache still runs its lookup and
the outcomes of its would-be hits keep arriving (from requests that run to the end and from
audits); it turns back on once ``recover_samples`` fresh outcomes agree at least at the
target. Evidence is cleared at each switch, so each decision rests on data from after the last.

The guard also raises an *alarm* while a position that is on looks worse than promised but
the evidence does not yet decide it: a CUSUM test of the target agreement t against an error
rate ``alarm_ratio`` times the promised one, a = 1 - ratio (1 - t) (an error adds
log((1 - a) / (1 - t)), an agreement log(a / t), floored at zero; alarm at ``alarm_level``).
A good cache's rare errors decay away; two errors close together, as a cache that stopped
agreeing makes, raise it. The learner audits more while the alarm is up
(``alarm_audit_fraction``), so the evidence that switches a drifting cache off arrives
sooner: on a long shift stream, at a 10% audit the guard needed 896 requests to see 30
would-be hits of a cache agreeing 67% of the time on corrupted images, with the alarm 494.
With ``suspend_on_alarm`` an alarmed position also serves no hit until the alarm falls or the
evidence decides: suspicion alone is reason enough not to answer from that cache.

When the inputs themselves shift (``shift.py``), the learner calls ``distrust``: every position
stops serving hits and its evidence is cleared (outcomes on the old inputs do not speak for
the new ones); a position is trusted again once ``recover_samples`` outcomes on the new inputs
agree at the target, or when the inputs look like the reference again (``trust_all``, which
clears the evidence again). A position switched off meanwhile stays off while the shift lasts
and recovers on outcomes from after it.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from gati_jax.caches.selector import wilson_lower_bound


def wilson_upper_bound(successes: int, trials: int, confidence: float) -> float:
    """One-sided Wilson score upper bound of a binomial proportion."""
    return 1.0 - float(
        wilson_lower_bound(np.asarray(trials - successes), np.asarray(trials), confidence)
    )


@dataclasses.dataclass
class GuardEvent:
    """A switch of one position, after ``served`` requests."""

    served: int
    position: int
    on: bool
    agreement: float
    samples: int
    kind: str = "switch"  # "switch": on/off; "trust": trusted (on) or distrusted (off)


class AccuracyGuard:
    """Keeps each position's hit agreement at ``target`` or turns the position off."""

    def __init__(
        self,
        positions: tuple[int, ...],
        target: float,
        window: int = 200,
        confidence: float = 0.95,
        min_samples: int = 10,
        recover_samples: int = 50,
        alarm_ratio: float = 5.0,
        alarm_level: float = 3.0,
        suspend_on_alarm: bool = False,
    ):
        if not 0 < target <= 1:
            raise ValueError(f"guard target must be in (0, 1], got {target}")
        if not alarm_ratio > 1 or not alarm_level > 0:
            raise ValueError(
                f"guard alarm needs a ratio > 1 and a level > 0, got {alarm_ratio}, {alarm_level}"
            )
        if min_samples < 1 or recover_samples < 1 or window < max(min_samples, recover_samples):
            raise ValueError(
                "guard needs window >= min_samples, recover_samples >= 1, got "
                f"{window}, {min_samples}, {recover_samples}"
            )
        self.positions = tuple(positions)
        self.target, self.confidence = float(target), float(confidence)
        self.min_samples, self.recover_samples = int(min_samples), int(recover_samples)
        self.evidence = [collections.deque(maxlen=int(window)) for _ in self.positions]
        self.on = np.ones(len(self.positions), bool)
        self.trusted = np.ones(len(self.positions), bool)
        self.shifted = False  # between distrust and trust_all
        self.events: list[GuardEvent] = []
        self.alarm_level = float(alarm_level)
        self.suspend_on_alarm = bool(suspend_on_alarm)
        # CUSUM steps per outcome; a target of 1 makes any error decisive.
        t = min(self.target, 1 - 1e-6)
        a = max(1 - alarm_ratio * (1 - t), t / 2)
        self._agree_step = float(np.log(a / t))
        self._error_step = float(np.log((1 - a) / (1 - t)))
        self.cusum = np.zeros(len(self.positions))

    def alarmed(self) -> bool:
        """Whether a position that is on looks worse than the target, undecided yet."""
        return bool(np.any(self._alarmed()))

    def _alarmed(self) -> np.ndarray:
        return self.on & (self.cusum >= self.alarm_level)

    def record(self, k: int, agree: np.ndarray, served: int) -> None:
        """Adds outcomes (cache answer == base answer) of would-be hits at deployed index ``k``."""
        agree = np.asarray(agree, bool).reshape(-1)
        if not agree.size:
            return
        self.evidence[k].extend(agree.tolist())
        for outcome in agree.tolist():
            step = self._agree_step if outcome else self._error_step
            self.cusum[k] = max(0.0, self.cusum[k] + step)
        n, good = len(self.evidence[k]), int(sum(self.evidence[k]))
        recovered = n >= self.recover_samples and good / n >= self.target
        if self.on[k]:
            if n >= self.min_samples and wilson_upper_bound(good, n, self.confidence) < self.target:
                self._switch(k, False, good, n, served)
            elif recovered and not self.trusted[k]:
                self.trusted[k] = True
                self.events.append(
                    GuardEvent(served, self.positions[k], True, good / n, n, "trust")
                )
        elif recovered and not self.shifted:
            # Not while the inputs are still the shifted ones it failed on (measured on the
            # long shift stream: a cache switched off on corrupted images came back on 50
            # agreeing outcomes, a 97% cache passes that one time in five, and the window
            # agreed 0.988).
            self._switch(k, True, good, n, served)

    def _switch(self, k: int, on: bool, good: int, n: int, served: int) -> None:
        self.on[k] = on
        self.events.append(GuardEvent(served, self.positions[k], on, good / n, n))
        self._forget(k)

    def _forget(self, k: int) -> None:
        """Starts position ``k``'s evidence afresh: each decision rests on outcomes since the
        last switch or shift."""
        self.evidence[k].clear()
        self.cusum[k] = 0.0

    def distrust(self, served: int) -> None:
        """The inputs shifted: no position serves a hit until outcomes on the new inputs
        (evidence is cleared) show it agrees at the target."""
        for k in range(len(self.positions)):
            self._forget(k)
            if self.trusted[k]:
                self.events.append(
                    GuardEvent(served, self.positions[k], False, float("nan"), 0, "trust")
                )
        self.trusted[:] = False
        self.shifted = True

    def trust_all(self, served: int) -> None:
        """The inputs look like the reference again: positions that are on serve again, and
        evidence gathered on the shifted inputs is cleared (it does not speak for these
        either: a cache that failed on them must prove itself again before it serves)."""
        for k in range(len(self.positions)):
            self._forget(k)
            if self.on[k] and not self.trusted[k]:
                self.events.append(
                    GuardEvent(served, self.positions[k], True, float("nan"), 0, "trust")
                )
        self.trusted[:] = True
        self.shifted = False

    def thresholds(self, nominal: np.ndarray) -> np.ndarray:
        """The thresholds to serve with: ``nominal`` where on and trusted, +inf elsewhere (and
        where alarmed, with ``suspend_on_alarm``)."""
        serving = self.on & self.trusted
        if self.suspend_on_alarm:
            serving &= ~self._alarmed()
        return np.where(serving, np.asarray(nominal, np.float32), np.inf).astype(np.float32)
