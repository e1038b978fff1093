"""``load_test.py``'s job: running servers measured by a real client, side by side.

One stream (the config's ``workload``, drawn from the served network's own data set) is sent
to every target server (``name -> URL``, each serving some policy of the same system) in
rounds whose order rotates, so machine noise lands on every target alike. Per target: the
client's p50/p99/mean latency, throughput, errors, hit rate, and agreement with the plain
network (whose answers this process computes in-process); the mean-latency speedup over the
first target (put ``none`` first); and, at batch 1 (closed loop, one client), the server's own
overhead: the client's p50 minus the p50 of the same policy's ``route`` timed in this process
on the same requests.

With ``overload_factor`` (e.g. 2), each target is then driven open loop at that multiple of
the plain network's saturation rate (the first target's closed-loop throughput with
``2 * max_group`` clients), while one probing client measures how long after the load's end
the latency comes back: the server must answer or refuse every request (no request lost),
and its p99 recover.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from gati_jax import data
from gati_jax.data.workloads import make_workload
from gati_jax.evaluation import model_data_config
from gati_jax.experiments.plots import plot_latency_cdf
from gati_jax.inference import predict_logits
from gati_jax.serve.client import LoadResult, poisson_schedule, run_load, summarize_load
from gati_jax.serve.engine import Engine, build_engine
from gati_jax.serve.http_client import HttpClient
from gati_jax.serving.clock import VirtualClock
from gati_jax.serving.loop import serve_interleaved, serve_steps
from gati_jax.system import load_system
from gati_jax.tables import format_table

# Recovery: a window of this many consecutive probes whose p99 (their largest) is within
# RECOVERY_SLACK of the pre-load p99 marks the server recovered.
RECOVERY_WINDOW = 20
RECOVERY_SLACK = 1.5
# The logged table's columns (load_test.json holds every figure).
_COLUMNS = (
    "policy",
    "answered",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "server_p50_ms",
    "throughput_rps",
    "speedup",
    "hit_rate",
    "agreement",
    "inprocess_p50_ms",
    "server_overhead_ms",
)


async def _policy(url: str) -> str:
    """The policy a server serves, from its /healthz."""
    async with HttpClient(url) as http:
        status, body = await http.get("/healthz")
    if status != 200:
        raise RuntimeError(f"{url}/healthz answered {status}: {body[:200]!r}")
    return json.loads(body)["policy"]


def inprocess_ms(
    engines: dict[str, Engine], images: np.ndarray, rounds: int = 1
) -> dict[str, np.ndarray]:
    """Per engine, each request's ``route`` time at batch 1 (ms), in this process, the
    engines interleaved request by request (the same noise for all)."""
    times = {name: [] for name in engines}
    for engine in engines.values():
        engine.warm_up()
    for _ in range(rounds):
        for image in images:
            batch = image[None]
            for name, engine in engines.items():
                start = time.perf_counter()
                engine.route(batch)
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: np.asarray(t) for name, t in times.items()}


def simulated_means_ms(
    engines: dict[str, Engine],
    workload: Any,
    serving: ml_collections.ConfigDict,
    rounds: int,
    turn: int,
) -> dict[str, float]:
    """Per engine, the mean latency (ms) the simulator (gati_jax/serving, virtual clock, the
    policies interleaved as the benchmark serves them) gives on ``workload``: the median over
    ``rounds`` of each round's mean."""
    means: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(rounds):
        loops = {
            name: serve_steps(
                lambda images, index, e=engine: e.route(images),
                workload.images,
                arrivals=workload.arrivals,
                mode=serving.mode,
                max_group=int(serving.max_group),
                max_wait_s=float(serving.max_wait_ms) / 1e3,
                concurrency=int(serving.concurrency),
                clock=VirtualClock(),
                progress=False,
            )
            for name, engine in engines.items()
        }
        for name, result in serve_interleaved(loops, turn, seed=r).items():
            means[name].append(1e3 * float(result.latency.mean()))
    return {name: float(np.median(m)) for name, m in means.items()}


def recovered_after_s(probes: LoadResult, baseline_p99_ms: float) -> float | None:
    """When (s after the load's end) the first window of ``RECOVERY_WINDOW`` answered probes
    whose p99 is within ``RECOVERY_SLACK`` x the pre-load p99 began; None if none did."""
    ok = probes.status == 200
    ms, sent = 1e3 * probes.latency[ok], probes.sent[ok]
    bound = RECOVERY_SLACK * baseline_p99_ms
    for start in range(0, len(ms) - RECOVERY_WINDOW + 1):
        if np.percentile(ms[start : start + RECOVERY_WINDOW], 99) <= bound:
            return float(sent[start])
    return None


async def overload(
    url: str,
    images: np.ndarray,
    rate: float,
    count: int,
    recovery_s: float,
    timeout_s: float,
    seed: int = 0,
) -> dict[str, Any]:
    """``count`` requests open loop at ``rate``; then the recovery: one client probing from
    the moment the last request is sent, for ``recovery_s`` seconds."""
    baseline = await run_load(url, images[:100], mode="closed", concurrency=1, timeout_s=timeout_s)
    baseline_p99 = summarize_load(baseline)["p99_ms"]
    arrivals = poisson_schedule(count, rate, seed)
    stream = np.resize(images, (count, *images.shape[1:]))
    probes_images = np.resize(images, (int(recovery_s * 4000) + 1, *images.shape[1:]))

    async def probe() -> LoadResult:
        await asyncio.sleep(float(arrivals[-1]))
        return await run_load(
            url,
            probes_images,
            mode="closed",
            concurrency=1,
            duration_s=recovery_s,
            timeout_s=timeout_s,
        )

    load, probes = await asyncio.gather(
        run_load(url, stream, mode="open", arrivals=arrivals, timeout_s=timeout_s), probe()
    )
    summary = summarize_load(load)
    refused = int(np.sum(load.status == 503))
    return {
        "rate_rps": rate,
        "sent": len(load),
        "answered": summary["answered"],
        "refused": refused,
        "lost": int(np.sum(load.status == 0)),
        "other_errors": int(len(load) - summary["answered"] - refused - np.sum(load.status == 0)),
        "max_answer_or_refusal_ms": summary["max_answer_or_refusal_ms"],
        "answered_p99_ms": summary["p99_ms"],
        "throughput_rps": summary["throughput_rps"],
        "client_max_lag_ms": summary["client_max_lag_ms"],
        "baseline_p99_ms": baseline_p99,
        "recovered_after_s": recovered_after_s(probes, baseline_p99),
        "probes": len(probes),
    }


def run_load_test(
    config: ml_collections.ConfigDict,
    workdir: str,
    targets: dict[str, str],
    out_dir: str,
    *,
    mode: str,
    rate: float,
    concurrency: int,
    requests: int,
    rounds: int,
    duration_s: float | None,
    timeout_s: float,
    payload: str,
    overload_factor: float,
    overload_requests: int,
    recovery_s: float,
    busy_poll: bool = False,
) -> dict[str, Any]:
    """Measures every target on the config's workload (``requests`` long; open loop at
    ``rate``, or closed loop with ``concurrency`` clients; every round's requests bounded by
    ``duration_s``, each by ``timeout_s``); with ``overload_factor`` > 0 also the overload
    test (``overload_requests`` requests, ``recovery_s`` of probing). ``busy_poll``: the
    measuring client polls instead of sleeping (gati_jax/serve/client.py). Writes
    OUT_DIR/load_test.json and OUT_DIR/load_latency_cdf.png; returns the report."""
    if not targets:
        raise ValueError("no target servers (name=URL)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_group = int(config.serving.max_group)
    system = load_system(workdir, max_group=max_group)
    model = system.model
    dataset = data.load_dataset(model_data_config(model, config.data.data_dir))
    section = ml_collections.ConfigDict(config.workload.to_dict())
    section.length = int(requests)
    workload = make_workload(section, getattr(dataset, section.split))
    images, labels = workload.images, workload.labels
    base = predict_logits(model, images).argmax(-1)
    policies = {name: asyncio.run(_policy(url)) for name, url in targets.items()}
    logging.info(f"targets: {policies}")
    # In-process references for the static policies the targets serve.
    static = {p for p in policies.values() if p in ("none", system.plan.policy)}
    engines = {
        p: build_engine(
            model,
            system.deployment,
            p,
            max_group,
            route=(system.route if p == system.plan.policy else None),
        )
        for p in sorted(static)
    }
    reference = inprocess_ms(engines, images, rounds=1) if engines else {}
    simulated = (
        simulated_means_ms(engines, workload, config.serving, rounds, int(config.benchmark.turn))
        if engines
        else {}
    )
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    names = list(targets)
    arrivals = poisson_schedule(len(images), rate, int(section.seed)) if mode == "open" else None
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(
                asyncio.run(
                    run_load(
                        targets[name],
                        images,
                        mode=mode,
                        arrivals=arrivals,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        timeout_s=timeout_s,
                        payload=payload,
                        busy_poll=busy_poll,
                    )
                )
            )
    first = names[0]
    rows, report_targets = [], {}
    round_means = {n: [summarize_load(res)["mean_ms"] for res in rs] for n, rs in results.items()}
    for name in names:
        pooled = LoadResult(
            *(
                np.concatenate([getattr(res, f) for res in results[name]])
                for f in (
                    "index",
                    "sent",
                    "latency",
                    "status",
                    "answer",
                    "exit_stage",
                    "hit",
                    "server_ms",
                    "lag",
                )
            ),
            duration=sum(res.duration for res in results[name]),
        )
        summary = summarize_load(pooled, base, labels)
        summary["policy"] = policies[name]
        summary["mean_ms"] = float(np.median(round_means[name]))  # median of round means
        summary["speedup"] = float(np.median(round_means[first])) / summary["mean_ms"]
        policy = policies[name]
        if policy in reference:
            summary["inprocess_p50_ms"] = float(np.percentile(reference[policy], 50))
            summary["inprocess_mean_ms"] = float(reference[policy].mean())
            if mode == "closed" and int(concurrency) == 1:
                summary["server_overhead_ms"] = summary["p50_ms"] - summary["inprocess_p50_ms"]
        report_targets[name] = summary
        rows.append({"target": name, **{k: summary.get(k, float("nan")) for k in _COLUMNS}})
    planned = system.plan.policy
    simulated_speedup = (
        simulated["none"] / simulated[planned]
        if "none" in simulated and planned in simulated
        else None
    )
    report = {
        "workload": workload.name,
        "requests": len(images),
        "rounds": rounds,
        "mode": mode,
        "concurrency": concurrency,
        "rate_rps": rate if mode == "open" else None,
        "payload": payload,
        "busy_poll": busy_poll,
        "max_group": max_group,
        "max_wait_ms": float(config.serving.max_wait_ms),
        "plan_policy": system.plan.policy,
        "plan_positions": list(system.plan.positions),
        # The simulator's mean-latency speedup of the plan over none on this stream.
        "simulated_speedup": simulated_speedup,
        "simulated_mean_ms": simulated,
        # Every target's "speedup": the first target's mean latency over its own.
        "speedup_over": first,
        "targets": report_targets,
    }
    if overload_factor > 0:
        saturation = asyncio.run(
            run_load(
                targets[first],
                images,
                mode="closed",
                concurrency=2 * max_group,
                timeout_s=timeout_s,
            )
        )
        saturation_rps = summarize_load(saturation)["throughput_rps"]
        report["saturation_rps"] = saturation_rps
        report["overload"] = {
            name: asyncio.run(
                overload(
                    url,
                    images,
                    overload_factor * saturation_rps,
                    int(overload_requests),
                    recovery_s,
                    timeout_s,
                )
            )
            | {"factor": overload_factor}
            for name, url in targets.items()
        }
    (out / "load_test.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_latency_cdf(
        {
            workload.name: {
                name: 1e3 * np.concatenate([res.latency[res.status == 200] for res in rs])
                for name, rs in results.items()
            }
        },
        out / "load_latency_cdf.png",
    )
    logging.info("\n" + format_table(rows))
    if simulated_speedup is not None:
        for name, summary in report_targets.items():
            if summary["policy"] == planned:
                logging.info(
                    f"{name}: served speedup {summary['speedup']:.3f} over {first}, "
                    f"simulated {simulated_speedup:.3f} (served / simulated "
                    f"{summary['speedup'] / simulated_speedup:.3f})"
                )
    for name, figures in report.get("overload", {}).items():
        logging.info(f"overload {name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    logging.info(f"wrote {out / 'load_test.json'} and {out / 'load_latency_cdf.png'}")
    return report
