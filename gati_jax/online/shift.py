"""Label-free covariate-shift detection on the first deployed position's cache input.

The guard judges a cache by audited outcomes, and audits come at the audit's pace: at the
start of a corrupted stretch it has no evidence, and the caches answer wrongly until enough
labels arrive (on the long shift stream the static caches' first window agreed 0.916, and so
did gati-online's). The inputs themselves say sooner that something changed: every request
passes the first deployed position, whose cache input (pooled early activations) the tapped
program returns anyway.

``ShiftReference`` holds, from in-distribution images (the validation split), the per-feature
mean and spread of that input and, per class answered there, the ``quantile`` of a request's
distance (mean squared standardised deviation). A request *exceeds* when its distance is above
its class's limit, which in distribution happens to ``1 - quantile`` of the requests of every
class, whatever the class mix of a temporal segment: one limit for all classes had 13% of one
class's requests exceed a 5% limit on a clean temporal stream, enough for false alarms. Measured
on the shipped ResNet-18's first planned position (5% limits): clean requests exceeded 5-7% per
class, contrast-corrupted ones 62-82%, noisy ones 28%; blur at severity 0.5 left this input
alone (7%).

``ShiftDetector`` runs a CUSUM of exceedances, the in-distribution rate against ``rate`` (an
exceedance adds log(rate / p0), a request within its limit log((1 - rate) / (1 - p0)), floored
at zero and capped at twice ``level``). The alarm rises when the sum reaches ``level`` and falls
only when it is back at zero: without that dead band it flapped on a clean stream (up and down
twice within 11 requests, each rise clearing the guard's evidence); with the cap it still falls
within a few dozen requests once the inputs are back. Simulated median run lengths at
p0 = 0.05, rate 0.5, level 6: 5 tapped requests at a 62% exceedance rate, 16 at 28%; 418 at
7.5% and 1,564 at 5%.

The level (``online.shift_level``, 8 by default) trades false alarms for delay. Replayed on the
first cache inputs of the main job's plan (positions 0, 3, 5; reference: 2,000 validation
images; 5,000 clean test images in 50 random orders; 1,500 corrupted ones at severity 0.5), in
tapped requests:

=====  ==========================  ===========================  ========================
level  false alarms / 4,000 clean  contrast: alarm after (max)  noise: alarm after (max)
=====  ==========================  ===========================  ========================
6      2.24                        4 (10)                       14 (71)
8      0.26                        5 (13)                       22 (81)
=====  ==========================  ===========================  ========================

A false alarm is not free: until the alarm falls and each position has proved itself again,
caches serve no hits (one at level 6 cost the main job's 600-request uniform stream 3.5 points
of hit rate). Limits at an upper confidence bound of each class's quantile instead (clean
exceedance 3.2% instead of 5.4%) cut false alarms less (0.43 at level 6) and slowed the noise
alarm more (32 requests).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# A class answered this rarely in the reference gets the limit of all classes: a quantile of a
# handful of distances would be noise.
MIN_CLASS_REFERENCE = 20


@dataclasses.dataclass(frozen=True)
class ShiftReference:
    """In-distribution statistics of the first position's cache input."""

    mean: np.ndarray  # (F,) per feature
    scale: np.ndarray  # (F,) per feature spread (std + a floor)
    limits: np.ndarray  # (classes,) the distance exceeded by 1 - quantile of each class
    quantile: float  # so in distribution a request exceeds its limit at 1 - quantile

    @classmethod
    def fit(
        cls, inputs: np.ndarray, answers: np.ndarray, num_classes: int, quantile: float
    ) -> ShiftReference:
        """Fits the reference to ``inputs`` (N, ...) of in-distribution requests and the
        first cache's ``answers`` (N,) to them."""
        x = _flat(inputs)
        answers = np.asarray(answers, np.int64).reshape(-1)
        if x.shape[0] != answers.shape[0] or x.shape[0] < MIN_CLASS_REFERENCE:
            raise ValueError(
                f"a shift reference needs >= {MIN_CLASS_REFERENCE} inputs with one "
                f"answer each, got {x.shape[0]} inputs, {answers.shape[0]} answers"
            )
        if not np.isfinite(x).all():
            raise ValueError("the shift reference's inputs contain NaN or Inf")
        if not 0 < quantile < 1:
            raise ValueError(f"shift quantile must be in (0, 1), got {quantile}")
        mean = x.mean(0)
        # The floor keeps features that never move (dead ReLUs) from dividing by zero.
        scale = x.std(0) + 1e-3 * (x.std() + 1e-12)
        reference = cls(mean, scale, np.zeros(num_classes), float(quantile))
        distance = reference.distance(x)
        limits = np.full(num_classes, np.quantile(distance, quantile))
        for c in range(num_classes):
            mine = distance[answers == c]
            if mine.size >= MIN_CLASS_REFERENCE:
                limits[c] = np.quantile(mine, quantile)
        return dataclasses.replace(reference, limits=limits)

    def distance(self, inputs: np.ndarray) -> np.ndarray:
        """Per request, the mean squared standardised deviation from the reference mean."""
        return (((_flat(inputs) - self.mean) / self.scale) ** 2).mean(1)

    def exceeds(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """Per request, whether its distance is above its answered class's limit."""
        return self.distance(inputs) > self.limits[np.asarray(answers, np.int64).reshape(-1)]


@dataclasses.dataclass
class ShiftEvent:
    """The alarm rose (``on``) or fell after ``served`` requests."""

    served: int
    on: bool


class ShiftDetector:
    """A CUSUM over requests exceeding the reference: ``alarmed()`` while inputs look shifted.

    The alarm rises on the CUSUM. It falls when the CUSUM is back at zero *and* the recent
    exceedance rate, an exponential moving average over about ``fall_window`` requests, is
    at most ``fall_rate`` (between the in-distribution rate and ``rate``). The CUSUM alone
    flapped on inputs shifted only a little, whose rate sits near its break-even (a camera
    stream, 19-38% of requests exceeding against a break-even of 22%: the alarm rose and fell
    20 times in 1,500 requests, each fall trusted the caches again and cleared the evidence
    that would have switched them off, and 500-request windows agreed 0.88); the average
    stays above ``fall_rate`` for as long as such inputs last.
    """

    def __init__(
        self,
        reference: ShiftReference,
        rate: float,
        level: float,
        fall_rate: float | None = None,
        fall_window: int = 1,
    ):
        p0 = 1 - reference.quantile  # the in-distribution exceedance rate
        if not p0 < rate < 1 or not level > 0:
            raise ValueError(
                f"shift detection needs 1 - quantile < rate < 1 and level > 0, got "
                f"quantile {reference.quantile}, rate {rate}, level {level}"
            )
        fall_rate = rate if fall_rate is None else float(fall_rate)
        if not p0 < fall_rate <= rate or fall_window < 1:
            raise ValueError(
                f"shift detection needs 1 - quantile < fall_rate <= rate and "
                f"fall_window >= 1, got {fall_rate}, {fall_window}"
            )
        self.reference, self.level = reference, float(level)
        self._exceed_step = float(np.log(rate / p0))
        self._within_step = float(np.log((1 - rate) / (1 - p0)))
        self.fall_rate, self._decay = fall_rate, 1.0 - 1.0 / fall_window
        self.cusum = 0.0
        self.recent_rate = p0  # the moving average of exceedances
        self.events: list[ShiftEvent] = []
        self.seen = self.exceeded = 0

    def alarmed(self) -> bool:
        """Whether the inputs look unlike the reference now."""
        return bool(self.events) and self.events[-1].on

    def record(self, inputs: np.ndarray, answers: np.ndarray, served: int) -> None:
        """Adds requests in serving order (their first cache input and answer); a rise or fall
        of the alarm is logged at ``served``."""
        exceeds = self.reference.exceeds(inputs, answers)
        self.seen += exceeds.size
        self.exceeded += int(exceeds.sum())
        for outcome in exceeds.tolist():
            step = self._exceed_step if outcome else self._within_step
            self.cusum = min(2 * self.level, max(0.0, self.cusum + step))
            self.recent_rate = self._decay * self.recent_rate + (1 - self._decay) * outcome
            if not self.alarmed() and self.cusum >= self.level:
                self.events.append(ShiftEvent(served, True))
            elif self.alarmed() and self.cusum == 0.0 and self.recent_rate <= self.fall_rate:
                self.events.append(ShiftEvent(served, False))


def _flat(inputs: np.ndarray) -> np.ndarray:
    inputs = np.asarray(inputs, np.float64)
    return inputs.reshape(inputs.shape[0], -1)
