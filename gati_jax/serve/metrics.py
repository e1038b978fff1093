"""The server's Prometheus metrics: requests, latency, hits and exits per position, queue depth,
and, for gati-online, the learner's updates and the accuracy guard's state.

Each server owns its registry (several servers in one process, as in the tests, never share
counters). Everything is updated on the event loop's thread, and the learner's figures are
read at scrape time on that thread too, between groups: no lock is needed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gati_jax.online.learner import OnlineLearner
from gati_jax.runtime.router import RouteResult
from gati_jax.serve.engine import Engine

# Outcomes of POST /v1/predict, the `outcome` label of gati_requests_total.
OUTCOMES = ("ok", "bad_request", "too_large", "overloaded", "error")
# Server-side request latency buckets (seconds): 0.1 ms .. 2.5 s.
_LATENCY_BUCKETS = (
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The metrics of one server over one engine; :meth:`render` is the /metrics body."""

    def __init__(self, engine: Engine, queue_depth=lambda: 0):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gati_requests", "Prediction requests by outcome", ["outcome"], registry=r
        )
        self._outcomes = {o: self.requests.labels(outcome=o) for o in OUTCOMES}
        self.images = Counter("gati_images", "Images answered", registry=r)
        self.latency = Histogram(
            "gati_request_latency_seconds",
            "Server-side latency of answered prediction requests (body read to answer)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.group_size = Histogram(
            "gati_group_size",
            "Images per request group routed",
            buckets=tuple(float(2**i) for i in range(11)),
            registry=r,
        )
        stages = (*engine.positions, engine.last_stage)
        exits = Counter(
            "gati_exits",
            "Images that exited after each stage (the last stage: no cache hit)",
            ["position"],
            registry=r,
        )
        hits = Counter(
            "gati_hits", "Images a cache answered, per cache position", ["position"], registry=r
        )
        self._exits = {p: exits.labels(position=str(p)) for p in stages}
        self._hits = {p: hits.labels(position=str(p)) for p in engine.positions}
        queue = Gauge("gati_queue_depth", "Images waiting to be grouped", registry=r)
        queue.set_function(queue_depth)
        Gauge("gati_info", "The served policy", ["policy"], registry=r).labels(
            policy=engine.policy
        ).set(1)
        if engine.learner is not None:
            r.register(LearnerCollector(engine.learner))

    def request(self, outcome: str, seconds: float | None = None) -> None:
        """Counts one prediction request (and its latency, when answered)."""
        self._outcomes[outcome].inc()
        if seconds is not None:
            self.latency.observe(seconds)

    def group(self, result: RouteResult, seconds: float) -> None:
        """Counts one routed group's images, exits and hits (ServerCore's ``on_group``)."""
        del seconds
        n = len(result.answer)
        self.images.inc(n)
        self.group_size.observe(n)
        # Python counting: groups are small, and numpy's per-call cost was most of this
        # method's 25 us at batch 1.
        counts = collections.Counter(
            zip(np.asarray(result.exit_stage).tolist(), np.asarray(result.hit).tolist())
        )
        for (stage, hit), count in counts.items():
            self._exits[stage].inc(count)
            if hit:
                self._hits[stage].inc(count)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class LearnerCollector(Collector):
    """gati-online's learner, read at scrape time: updates whose new parameters were accepted
    or rejected (the counting of ``OnlineLearner.summary``), audits, background chunks, and
    per cache position whether the accuracy guard lets it serve hits."""

    def __init__(self, learner: OnlineLearner):
        self.learner = learner
        self._seen = 0  # updates counted so far (the log only grows)
        self._accepted = self._rejected = 0

    def _count_updates(self) -> None:
        updates = self.learner.updates
        for update in updates[self._seen :]:
            if not update.trained:
                continue
            for verdict in update.verdicts:
                if verdict.reason == "waiting for data":
                    continue
                if verdict.updated:
                    self._accepted += 1
                else:
                    self._rejected += 1
        self._seen = len(updates)

    def collect(self) -> Iterator:
        learner = self.learner
        self._count_updates()
        verdicts = CounterMetricFamily(
            "gati_learner_updates",
            "Trained cache updates by verdict (accepted: new parameters swapped in)",
            labels=["verdict"],
        )
        verdicts.add_metric(["accepted"], self._accepted)
        verdicts.add_metric(["rejected"], self._rejected)
        yield verdicts
        yield CounterMetricFamily(
            "gati_learner_audited", "Hits audited by the plain network", value=learner.audited
        )
        yield CounterMetricFamily(
            "gati_learner_chunks", "Background chunks run", value=learner.chunks
        )
        yield CounterMetricFamily(
            "gati_learner_tapped_groups",
            "Request groups served by the tapped program",
            value=learner.tapped_groups,
        )
        serving = GaugeMetricFamily(
            "gati_guard_serving",
            "1 while the accuracy guard lets the cache at this "
            "position serve hits, 0 while it is off or suspended",
            labels=["position"],
        )
        thresholds = learner.thresholds()
        for position, threshold in zip(learner.positions, thresholds):
            serving.add_metric([str(position)], float(np.isfinite(threshold)))
        yield serving
        yield GaugeMetricFamily(
            "gati_guard_alarm",
            "1 while the guard's alarm is up",
            value=float(learner.guard.alarmed()),
        )
