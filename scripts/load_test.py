"""Measures running servers with a real client, side by side on one request stream.

``python scripts/load_test.py --config configs/smoke.py --workdir DIR
--target none=http://127.0.0.1:8001 --target gati=http://127.0.0.1:8002 [--mode closed
--concurrency 1 | --mode open --rate 200] [--overload_factor 2]`` replays the config's
workload against every target (each a server of DIR's system, e.g. started with
scripts/serve.py), in rounds of rotating order, and writes OUT/load_test.json (per target:
p50/p99/mean latency, throughput, errors, agreement with the plain network, speedup over the
first target, and at batch 1 the server's overhead over in-process routing) and
OUT/load_latency_cdf.png. ``--overload_factor`` adds the overload test: open loop at that
multiple of the first target's saturation rate, then how long the p99 takes to recover.
"""

from absl import app, flags
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.experiments.load_test import run_load_test
from gati_jax.serve.client import MODES, PAYLOADS

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The work directory the servers serve.", required=True
)
_TARGETS = flags.DEFINE_multi_string(
    "target",
    [],
    "NAME=URL of a server; repeat. Put the plain network (none) first: speedups are over it.",
)
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/load_test).")
_MODE = flags.DEFINE_enum("mode", "closed", MODES, "Open loop (Poisson) or closed loop.")
_RATE = flags.DEFINE_float("rate", 100.0, "Open loop: requests per second.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 1, "Closed loop: concurrent clients.")
_REQUESTS = flags.DEFINE_integer("requests", 300, "Requests per round (the stream's length).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds per target, in rotating order.")
_DURATION = flags.DEFINE_float("duration_s", 60.0, "No request is sent later in a round.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 10.0, "A request unanswered this long is lost.")
_PAYLOAD = flags.DEFINE_enum("payload", "npy", PAYLOADS, "How images are sent.")
_OVERLOAD = flags.DEFINE_float(
    "overload_factor",
    0.0,
    "> 0: the overload test at this multiple of the first target's saturation rate.",
)
_OVERLOAD_REQUESTS = flags.DEFINE_integer(
    "overload_requests", 600, "Requests of the overload test."
)
_RECOVERY = flags.DEFINE_float("recovery_s", 5.0, "Probing after the overload, seconds.")
_BUSY_POLL = flags.DEFINE_bool(
    "busy_poll",
    False,
    "The measuring client polls instead of sleeping while it waits (one busy core): the "
    "client's own wake-up is left out of the latencies.",
)


def main(argv: list[str]) -> None:
    del argv
    targets = {}
    for target in _TARGETS.value:
        name, sep, url = target.partition("=")
        if not sep or not name or not url.startswith("http"):
            raise app.UsageError(f"--target must be NAME=http://HOST:PORT, got {target!r}")
        targets[name] = url
    if not targets:
        raise app.UsageError("give at least one --target NAME=URL")
    run_load_test(
        _CONFIG.value,
        _WORKDIR.value,
        targets,
        _OUT.value or f"{_WORKDIR.value}/load_test",
        mode=_MODE.value,
        rate=_RATE.value,
        concurrency=_CONCURRENCY.value,
        requests=_REQUESTS.value,
        rounds=_ROUNDS.value,
        duration_s=_DURATION.value,
        timeout_s=_TIMEOUT.value,
        payload=_PAYLOAD.value,
        overload_factor=_OVERLOAD.value,
        overload_requests=_OVERLOAD_REQUESTS.value,
        recovery_s=_RECOVERY.value,
        busy_poll=_BUSY_POLL.value,
    )


if __name__ == "__main__":
    cli.run(main)
