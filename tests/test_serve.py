"""The network server (gati_jax/serve): real HTTP on loopback, on the tiny staged MLP of the
router tests with two untrained caches whose thresholds let some requests exit at each one.
Every test is bounded in time; none needs a GPU or a trained work directory."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import jax
import ml_collections
import numpy as np
import pytest
from conftest import ROUTER_CLASSES, ROUTER_SHAPE, fc_caches
from prometheus_client.parser import text_string_to_metric_families

from gati_jax.config_checks import ConfigError
from gati_jax.inference import BaseModel
from gati_jax.online.config import online_config
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.router import RouteResult
from gati_jax.serve.client import poisson_schedule, run_load, summarize_load
from gati_jax.serve.config import server_config, server_section, validate_server
from gati_jax.serve.core import Overloaded, ServerCore, TooLarge
from gati_jax.serve.engine import Engine, build_engine, resolve_policy
from gati_jax.serve.frontend import PayloadError, ServerThread, decode_images
from gati_jax.serve.replicas import Published, Subscriber
from gati_jax.serving.config import serving_config

POSITIONS = (0, 2)
# Untrained selectors score about 0.44 (position 0) and 0.45 (position 2) on random pixels
# at this normalisation: these thresholds let some requests exit at each position.
THRESHOLDS = (0.444, 0.455)
MAX_GROUP = 4


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *ROUTER_SHAPE), dtype=np.uint8)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def system(base):
    """(model, deployment): the tiny network and its two gati caches."""
    network, variables = base
    model = BaseModel(
        network, variables, np.full(1, 0.5, np.float32), np.full(1, 0.3, np.float32), {}
    )
    heads, params = fc_caches(network, POSITIONS, ROUTER_CLASSES)
    deployment = Deployment(
        "gati", POSITIONS, heads, jax.device_put(params), np.asarray(THRESHOLDS, np.float32)
    )
    return model, deployment


def _sections(**server):
    serving = serving_config()
    serving.max_group, serving.max_wait_ms = MAX_GROUP, 1.0
    section = server_config()
    section.port = 0
    section.update(server)
    return serving, section


@pytest.fixture(scope="module")
def served(system):
    """A gati server on loopback and a reference router of the same deployment."""
    model, deployment = system
    engine = build_engine(model, deployment, "gati", MAX_GROUP)
    reference = deployment.router(model, MAX_GROUP)
    serving, section = _sections(max_queue=64, max_body_bytes=4096)
    with ServerThread(engine, serving, section) as server:
        yield (
            server,
            lambda images: reference.route(deployment.params, deployment.thresholds, images),
        )


def _post(url: str, body: bytes, content_type: str = "application/x-npy"):
    """(status, JSON reply, headers) of POST /v1/predict."""
    request = urllib.request.Request(
        url + "/v1/predict", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics parsed: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_answers_equal_route_for_npy_and_json_one_image_or_a_batch(served):
    server, route = served
    images = _images(12, seed=1)
    answers, exits = [], []
    for image in images[:6]:  # one client, one image a request: groups of one
        status, reply, _ = _post(server.url, _npy(image))
        assert status == 200 and reply["server_ms"] > 0
        answers += reply["classes"]
        exits += reply["exit_positions"]
        want = route(image[None])
        assert reply["hits"] == want.hit.tolist()
    want = [route(image[None]) for image in images[:6]]
    assert answers == [int(w.answer[0]) for w in want]
    assert exits == [int(w.exit_stage[0]) for w in want]
    # A batch of 4 is one group; one of 6 spans two (4 + 2).
    status, reply, _ = _post(server.url, _npy(images[:4]))
    assert status == 200 and reply["classes"] == route(images[:4]).answer.tolist()
    status, reply, _ = _post(
        server.url, json.dumps({"images": images[6:].tolist()}).encode(), "application/json"
    )
    want = [route(images[6:10]), route(images[10:])]
    assert reply["classes"] == [int(a) for w in want for a in w.answer]
    assert reply["exit_positions"] == [int(e) for w in want for e in w.exit_stage]
    status, reply, _ = _post(
        server.url, json.dumps({"image": images[0].tolist()}).encode(), "application/json"
    )
    assert status == 200 and reply["classes"] == answers[:1]
    # The stream exits at every cache position and at the end: the test sees all paths.
    every = np.concatenate([route(images[i : i + 4]).exit_stage for i in range(0, 12, 4)])
    assert set(every.tolist()) == {0, 2, 4}


BAD_PAYLOADS = [
    (b"", "application/x-npy", 400, "empty body"),
    (b"hello", "text/plain", 400, "unrecognised body"),
    (b"\x93NUMPY\x01\x00garbage", "application/x-npy", 400, "malformed .npy"),
    (_npy(np.zeros((5, 5, 1), np.uint8)), "application/x-npy", 400, "must have shape"),
    (_npy(np.zeros((2, 6, 6, 3), np.uint8)), "application/x-npy", 400, "must have shape"),
    (_npy(np.zeros((0, *ROUTER_SHAPE), np.uint8)), "application/x-npy", 400, "empty batch"),
    (_npy(np.full((1, *ROUTER_SHAPE), np.nan, np.float32)), "application/x-npy", 400, "NaN"),
    (
        _npy(np.full((1, *ROUTER_SHAPE), 300.0, np.float32)),
        "application/x-npy",
        400,
        "outside [0, 255]",
    ),
    (_npy(np.zeros((1, *ROUTER_SHAPE), bool)), "application/x-npy", 400, "uint8 or floating"),
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b'{"pixels": [1]}', "application/json", 400, "exactly one of 'image'"),
    (b"[[1, 2], [3]]", "application/json", 400, "not a regular array"),
    (
        json.dumps({"image": np.full(ROUTER_SHAPE, 256).tolist()}).encode(),
        "application/json",
        400,
        "[0, 255]",
    ),
    (json.dumps({"image": [[["a"]]]}).encode(), "application/json", 400, "hold numbers"),
    (
        _npy(np.zeros((200, *ROUTER_SHAPE), np.uint8)),
        "application/x-npy",
        413,
        "server.max_body_bytes",
    ),
    (_npy(np.zeros((65, *ROUTER_SHAPE), np.uint8)), "application/x-npy", 413, "server.max_queue"),
]


@pytest.mark.parametrize(
    "body,content_type,status,message", BAD_PAYLOADS, ids=[m for *_, m in BAD_PAYLOADS]
)
def test_a_bad_payload_gets_its_status_and_the_next_request_is_served(
    served, body, content_type, status, message
):
    server, route = served
    got, reply, _ = _post(server.url, body, content_type)
    assert got == status and message in reply["error"]
    image = _images(1, seed=2)
    got, reply, _ = _post(server.url, _npy(image))
    assert got == 200 and reply["classes"] == route(image).answer.tolist()


def test_healthz_and_unknown_routes(served):
    server, _ = served
    with urllib.request.urlopen(server.url + "/healthz", timeout=30) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["policy"] == "gati"
    assert health["positions"] == list(POSITIONS)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.url + "/v2/nothing", timeout=30)
    assert missing.value.code == 404 and "/v1/predict" in json.loads(missing.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(server.url + "/v1/predict", timeout=30)  # a GET
    assert wrong.value.code == 405
    assert json.loads(wrong.value.read())["error"] == "/v1/predict takes POST, not GET"


def test_metrics_parse_and_count_the_requests_sent(system):
    model, deployment = system
    engine = build_engine(model, deployment, "gati", MAX_GROUP)
    serving, section = _sections()
    images = _images(10, seed=3)
    with ServerThread(engine, serving, section) as server:
        replies = [
            _post(server.url, _npy(images[i : i + n]))[1] for i, n in ((0, 1), (1, 3), (4, 6))
        ]
        assert _post(server.url, b"junk", "text/plain")[0] == 400
        metrics = _metrics(server.url)
    exits = np.concatenate([r["exit_positions"] for r in replies])
    hits = np.concatenate([r["hits"] for r in replies])
    assert metrics[("gati_requests_total", (("outcome", "ok"),))] == 3
    assert metrics[("gati_requests_total", (("outcome", "bad_request"),))] == 1
    assert metrics[("gati_requests_total", (("outcome", "overloaded"),))] == 0
    assert metrics[("gati_images_total", ())] == 10
    assert metrics[("gati_request_latency_seconds_count", ())] == 3
    assert metrics[("gati_group_size_sum", ())] == 10
    for stage in (*POSITIONS, 4):
        assert metrics[("gati_exits_total", (("position", str(stage)),))] == np.sum(exits == stage)
    for position in POSITIONS:
        assert metrics[("gati_hits_total", (("position", str(position)),))] == np.sum(
            hits & (exits == position)
        )
    assert metrics[("gati_queue_depth", ())] == 0
    assert metrics[("gati_info", (("policy", "gati"),))] == 1


def _slow_engine(seconds: float) -> Engine:
    def route(images):
        time.sleep(seconds)  # a network this slow saturates at once
        n = len(images)
        return RouteResult(np.zeros(n, np.int32), np.full(n, 4, np.int32), np.zeros(n, bool))

    return Engine("none", route, (), 4, ROUTER_SHAPE, (0.0, 255.0), 1)


def test_overload_is_refused_at_once_with_retry_after_and_the_server_recovers():
    serving, section = _sections(max_queue=4, retry_after_s=2)
    serving.max_group, serving.max_wait_ms = 1, 0.0
    body = _npy(_images(1)[0])

    async def burst(url):
        async with aiohttp.ClientSession() as session:

            async def one():
                start = time.perf_counter()
                async with session.post(url + "/v1/predict", data=body) as response:
                    await response.read()
                    return (
                        response.status,
                        response.headers.get("Retry-After"),
                        time.perf_counter() - start,
                    )

            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(40))), 20)

    with ServerThread(_slow_engine(0.02), serving, section) as server:
        results = asyncio.run(burst(server.url))
        statuses = [s for s, _, _ in results]
        assert set(statuses) == {200, 503}  # none lost, none hung
        assert 4 <= statuses.count(200) < 40 and statuses.count(503) > 0  # max_queue 4
        assert all(retry == "2" for s, retry, _ in results if s == 503)
        # Refusals do not wait for the queue: faster than the slowest answer.
        assert max(t for s, _, t in results if s == 503) < max(t for s, _, t in results if s == 200)
        assert _post(server.url, body)[0] == 200
        metrics = _metrics(server.url)
        assert metrics[("gati_requests_total", (("outcome", "overloaded"),))] == statuses.count(503)
        assert metrics[("gati_requests_total", (("outcome", "ok"),))] == statuses.count(200) + 1


def _recording_route(groups: list[int]):
    """A route that answers each image's first pixel and records each group's size."""

    def route(images):
        groups.append(len(images))
        n = len(images)
        return RouteResult(
            images[:, 0, 0, 0].astype(np.int32), np.zeros(n, np.int32), np.ones(n, bool)
        )

    return route


def test_core_groups_by_max_group_and_max_wait_and_bounds_its_queue():
    groups = []
    route = _recording_route(groups)

    async def scenario():
        core = ServerCore(route, max_group=4, max_wait_s=0.05, max_queue=10)
        core.start()
        images = _images(10, seed=4)
        # Ten requests at once: full groups go at once, the rest after max_wait.
        futures = [core.submit(images[i : i + 1]) for i in range(9)]
        with pytest.raises(Overloaded):
            core.submit(images[:2])  # 9 queued + 2 > 10
        with pytest.raises(TooLarge):
            core.submit(np.zeros((11, *ROUTER_SHAPE), np.uint8))
        started = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*futures), 5)
        waited = time.perf_counter() - started
        assert [int(r.answer[0]) for r in results] == images[:9, 0, 0, 0].tolist()
        # A batch of 6 spans groups; its answers come back in order.
        batch = await asyncio.wait_for(core.predict(images[:6]), 5)
        assert batch.answer.tolist() == images[:6, 0, 0, 0].tolist()
        assert core.queued == 0 and core.stats.refused == 1
        await core.stop()
        return waited

    waited = asyncio.run(scenario())
    assert groups[:3] == [4, 4, 1] and waited >= 0.04  # the last one waited max_wait
    assert sum(groups[3:]) == 6 and max(groups[3:]) == 4


def test_core_refuses_requests_that_waited_past_max_queue_wait_instead_of_serving_late():
    def route(images):
        time.sleep(0.05)
        n = len(images)
        return RouteResult(np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, bool))

    async def scenario():
        core = ServerCore(route, max_group=1, max_wait_s=0.0, max_queue=10, max_queue_wait_s=0.02)
        core.start()
        started = time.perf_counter()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(core.predict(_images(1)) for _ in range(4)), return_exceptions=True), 5
        )
        took = time.perf_counter() - started
        late = await asyncio.wait_for(core.predict(_images(1)), 5)  # and it serves again
        await core.stop()
        return outcomes, took, late, core.stats

    outcomes, took, late, stats = asyncio.run(scenario())
    # The first finds the core idle and is served at once, in its own call; the others queue
    # behind it, the second is served, and the last two have waited past 20 ms by then.
    assert all(isinstance(o, RouteResult) for o in outcomes[:2]) and len(late.answer) == 1
    assert all(isinstance(o, Overloaded) and "in the queue" in str(o) for o in outcomes[2:])
    assert stats.shed == 2 and took < 2 * 0.05 + 0.1  # refused after two groups, not four


def test_an_idle_core_serves_a_lone_request_at_once_and_groups_the_requests_behind_it():
    groups = []
    route = _recording_route(groups)

    async def scenario():
        core = ServerCore(route, max_group=4, max_wait_s=0.0, max_queue=10)
        core.start()
        await asyncio.sleep(0.01)  # the batcher finds nothing queued and waits
        images = _images(6, seed=5)
        first = core.submit(images[:1])
        assert first.done() and groups == [1]  # served in submit: no pass through the loop
        # Submitted before the batcher looks again: queued and grouped, as under load.
        rest = [core.submit(images[i : i + 1]) for i in range(1, 6)]
        assert not any(f.done() for f in rest)
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
        assert [int(r.answer[0]) for r in results] == images[:, 0, 0, 0].tolist()
        await asyncio.sleep(0.01)
        again = core.submit(images[:1])  # idle again: at once again
        assert again.done()
        await core.stop()

    asyncio.run(scenario())
    assert groups == [1, 4, 1, 1]


def test_background_runs_when_idle_and_when_overdue_and_a_failure_stops_only_it():
    class Work:
        def __init__(self):
            self.queue, self.chunks, self.overdue_flag = 3, [], False

        def pending(self, idle=False):
            return self.queue > 0

        def overdue(self):
            return self.overdue_flag and self.queue > 0

        def run_chunk(self):
            self.queue -= 1
            self.chunks.append(time.perf_counter())
            if self.queue < 0:
                raise RuntimeError("broken learner")

    def route(images):
        n = len(images)
        return RouteResult(np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, bool))

    async def scenario():
        work = Work()
        core = ServerCore(route, max_group=1, max_wait_s=0.0, max_queue=100, background=work)
        core.start()
        future = core.submit(_images(1))
        await asyncio.sleep(0.05)
        # Answered, but not yet delivered to its client: the background waits.
        assert future.done() and work.chunks == []
        core.finished()
        await asyncio.sleep(0.05)
        assert len(work.chunks) == 3  # idle: all of it ran
        work.queue, work.overdue_flag = 2, True
        answers = [core.predict(_images(1)) for _ in range(5)]
        await asyncio.wait_for(asyncio.gather(*answers), 5)
        assert len(work.chunks) == 5  # overdue work ran between groups
        work.queue, work.overdue_flag = 0, False
        work.run_chunk = lambda: (_ for _ in ()).throw(RuntimeError("broken learner"))
        work.queue = 1  # found after the next group
        await asyncio.wait_for(core.predict(_images(1)), 5)
        await asyncio.sleep(0.05)
        assert core.stats.background_failed and core.background is None
        result = await asyncio.wait_for(core.predict(_images(1)), 5)  # serving goes on
        await core.stop()
        return result

    assert len(asyncio.run(scenario()).answer) == 1


def test_gati_online_learns_in_the_background_and_reports_it(system):
    model, deployment = system
    online = online_config()
    online.update(
        shift_detect=False,
        update_every=20,
        min_train=4,
        min_holdout=2,
        min_evidence=0,
        tap_fraction=1.0,
        audit_fraction=0.5,
        steps=2,
    )
    engine = build_engine(model, deployment, "gati-online", MAX_GROUP, online=online)
    serving, section = _sections()
    images = _images(120, seed=5)
    with ServerThread(engine, serving, section) as server:
        result = asyncio.run(
            asyncio.wait_for(run_load(server.url, images, mode="closed", concurrency=4), 60)
        )
        assert np.all(result.status == 200)
        learner = engine.learner
        # Idle: the background catches up (on a loaded machine it takes a while).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.call(
            lambda: learner.observed < 120 or learner.pending(idle=True)
        ):
            time.sleep(0.05)
        seen = server.call(lambda: (learner.observed, learner.chunks, len(learner.updates)))
        metrics = _metrics(server.url)
    observed, chunks, updates = seen
    assert observed == 120 and chunks > 0 and updates >= 1
    assert metrics[("gati_learner_chunks_total", ())] == chunks
    assert ("gati_learner_updates_total", (("verdict", "accepted"),)) in metrics
    for position in POSITIONS:
        assert metrics[("gati_guard_serving", (("position", str(position)),))] in (0, 1)


def test_load_generator_open_and_closed_loop_are_bounded(served):
    server, route = served
    images = _images(40, seed=6)
    base = np.asarray([int(route(image[None]).answer[0]) for image in images])
    closed = asyncio.run(run_load(server.url, images, mode="closed", concurrency=3, payload="json"))
    summary = summarize_load(closed, base_answers=base)
    assert summary["answered"] == 40 and summary["errors"] == {}
    assert summary["agreement"] == 1.0 and summary["p50_ms"] <= summary["p99_ms"]
    assert summary["throughput_rps"] > 0
    # A busy-polling client sees the same answers, and stops polling when it is done.
    polled = asyncio.run(run_load(server.url, images[:8], busy_poll=True))
    assert polled.answer.tolist() == closed.answer[:8].tolist()
    arrivals = poisson_schedule(40, 200.0, seed=0)
    assert arrivals[0] == 0 and np.all(np.diff(arrivals) >= 0)
    opened = asyncio.run(
        run_load(server.url, images, mode="open", arrivals=arrivals, duration_s=0.05)
    )
    assert 0 < len(opened) < 40 and np.all(opened.sent <= 0.05 + 0.02)
    # A server that is not there: every request lost, none hangs.
    lost = asyncio.run(run_load("http://127.0.0.1:9", images[:3], mode="closed", timeout_s=2))
    assert np.all(lost.status == 0) and summarize_load(lost)["errors"] == {"lost": 3}


def test_policy_choice_and_decoding():
    assert resolve_policy("plan", "gati") == "gati"
    assert resolve_policy("gati-online", "gati") == "gati-online"
    assert resolve_policy("none", "confidence") == "none"
    with pytest.raises(ConfigError, match="gati-online"):
        resolve_policy("gati-online", "confidence")
    one = decode_images(_npy(np.ones(ROUTER_SHAPE, np.uint8)), "", ROUTER_SHAPE)
    assert one.shape == (1, *ROUTER_SHAPE) and one.dtype == np.uint8
    floats = decode_images(
        json.dumps([np.ones(ROUTER_SHAPE).tolist()] * 2).encode(),
        "application/json",
        ROUTER_SHAPE,
        (0.0, 255.0),
    )
    assert floats.shape == (2, *ROUTER_SHAPE) and floats.dtype == np.float32
    with pytest.raises(PayloadError):
        decode_images(_npy(np.ones((3, 3), np.int64)), "", ROUTER_SHAPE)


@pytest.mark.parametrize(
    "key,value",
    [
        ("port", 70000),
        ("max_queue", 0),
        ("max_body_bytes", 10),
        ("retry_after_s", 0),
        ("num_replicas", 0),
        ("sync_every_s", 0.0),
        ("max_queue_wait_ms", 0.0),
        ("idle_poll_ms", -1.0),
        ("host", ""),
    ],
)
def test_server_config_rejects_bad_values_naming_the_key(key, value):
    section = server_config()
    section[key] = value
    with pytest.raises(ConfigError, match=rf"server\.{key}="):
        validate_server(section)


def test_server_section_applies_flags_over_the_config():
    config = ml_collections.ConfigDict({"server": server_config()})
    section = server_section(config, port=1234, policy=None)
    assert section.port == 1234 and section.policy == config.server.policy
    with pytest.raises(ConfigError, match="server.port"):
        server_section(config, port=-1)


def test_replicas_swap_published_parameters_atomically():
    """A replica serving groups while new versions arrive from another thread: every group
    is served by one version's parameters and thresholds together, and versions only move
    forward."""

    def route(params, thresholds, images):
        # Parameters and thresholds of version v both hold v.
        version = int(np.asarray(params[0]["v"]))
        assert np.all(thresholds == version), (version, thresholds)
        n = len(images)
        return RouteResult(np.full(n, version, np.int32), np.zeros(n, np.int32), np.zeros(n, bool))

    def published(v):
        return Published(v, ({"v": np.asarray(v)},), np.full(2, v, np.float32))

    subscriber = Subscriber(route, published(0))
    stop = threading.Event()

    def publisher():
        for v in range(1, 200):
            subscriber.apply(published(v))
            subscriber.apply(published(v - 1))  # an older version never replaces a newer
        stop.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    served = []
    while not stop.is_set():
        result, version = subscriber.route(_images(2))
        assert np.all(result.answer == version)
        served.append(version)
    thread.join()
    assert served == sorted(served) and subscriber.current.version == 199


def _tiny_engine() -> Engine:
    """The module fixture's engine, built from gati_jax alone (in a Ray replica's process)."""
    import jax.numpy as jnp

    from gati_jax.caches.selector import NUM_FEATURES, Selector
    from gati_jax.caches.variants import Predictor, parse_variant
    from gati_jax.models import build_network
    from gati_jax.runtime import CacheHead

    config = ml_collections.ConfigDict(dict(name="mlp", width=1, hidden_sizes=(24, 16, 12, 8)))
    network = build_network(config, ROUTER_SHAPE, ROUTER_CLASSES)
    model = BaseModel(
        network,
        network.init(jax.random.key(0)),
        np.full(1, 0.5, np.float32),
        np.full(1, 0.3, np.float32),
        {},
    )
    spec, shapes = parse_variant("fc-d1-h8"), network.activation_shapes()
    heads, params = [], []
    for k, p in enumerate(POSITIONS):
        key = jax.random.key(k)
        heads.append(CacheHead(spec, ROUTER_CLASSES, 1, 8))
        params.append(
            {
                "predictor": Predictor(spec, ROUTER_CLASSES).init(key, jnp.zeros(shapes[p]))[
                    "params"
                ],
                "selector": Selector(8).init(key, jnp.zeros((1, NUM_FEATURES)))["params"],
            }
        )
    deployment = Deployment(
        "gati",
        POSITIONS,
        tuple(heads),
        jax.device_put(tuple(params)),
        np.asarray(THRESHOLDS, np.float32),
    )
    return build_engine(model, deployment, "gati", MAX_GROUP)


def test_ray_serve_two_replicas_answer_requests(served):
    """Ray Serve (the `serve` extra): two replicas of the engine answer HTTP requests as the
    lean server does."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    import sys

    from ray import cloudpickle

    from gati_jax.serve import ray_app

    server, _ = served
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not a package

    @serve.deployment(num_replicas=2)
    class TinyReplica(ray_app.EngineReplica):
        def __init__(self):
            super().__init__(_tiny_engine(), MAX_GROUP, 1.0, server_config())

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        serve.run(TinyReplica.bind(), route_prefix="/", blocking=False)
        images = _images(6, seed=7)
        for image in images:
            request = urllib.request.Request(
                "http://127.0.0.1:8000/",
                data=_npy(image),
                headers={"Content-Type": "application/x-npy"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                reply = json.loads(response.read())
            assert reply["classes"] == _post(server.url, _npy(image))[1]["classes"]
        bad = urllib.request.Request("http://127.0.0.1:8000/", data=b"junk")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=60)
        assert refused.value.code == 400
    finally:
        serve.shutdown()
        ray.shutdown()
