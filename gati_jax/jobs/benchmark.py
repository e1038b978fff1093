"""``benchmark.py``'s job: every exit policy at its planned setting on the same request streams.

Each policy is planned for the same accuracy bound and memory budget on the validation split
(gati_jax/planner), then serves every workload (gati_jax/data/workloads.py) through the
serving loop in one process. Policies run in repeated rounds whose order rotates, so machine
noise does not favour one; latency figures are medians over rounds, and every speedup is a
ratio of mean latencies measured in the same round.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from gati_jax import data
from gati_jax.caches.bank import CacheBank, load_bank
from gati_jax.compilation import programs_loaded
from gati_jax.config import validate_config
from gati_jax.data.workloads import make_workload, scene_cuts, workload_stats
from gati_jax.evaluation import model_data_config
from gati_jax.experiments.device_scaling import device_scaling
from gati_jax.experiments.kernel_profile import describe_kernel_profile, kernel_profile_ms
from gati_jax.experiments.online_timeline import exit_timeline
from gati_jax.experiments.plots import (
    plot_exit_depth,
    plot_hit_rate_over_time,
    plot_latency_cdf,
    plot_measured_tradeoff,
)
from gati_jax.inference import BaseModel, predict_logits
from gati_jax.jobs.planning import knn_setup, plan_settings, run_planning
from gati_jax.jobs.report import comparison_lines
from gati_jax.measure import StepClock, describe_kernels
from gati_jax.online import apparate as apparate_online
from gati_jax.online.learner import OnlineLearner, OnlineSettings
from gati_jax.planner.apparate import RampSet
from gati_jax.planner.costs import (
    all_miss_kernels,
    all_miss_programs,
    measure_miss_overheads,
    plain_program,
)
from gati_jax.planner.plan import Plan, plan_deployment
from gati_jax.runtime.deployment import Deployment, best_per_position, deploy
from gati_jax.runtime.router import Router
from gati_jax.serving.clock import make_clock
from gati_jax.serving.loop import serve_interleaved, serve_steps
from gati_jax.serving.summary import paired_quantile_ratio_interval, summarize, windowed
from gati_jax.tables import format_table
from gati_jax.training.checkpointing import load_base_model

POLICIES = ("none", "gati", "confidence", "entropy", "apparate", "knn", "oracle")
ONLINE = "gati-online"  # the planned gati caches, learning online (config.online.enabled)
APPARATE_ONLINE = apparate_online.NAME  # Apparate re-tuning while it serves (when listed)
# The traditional recency cache: gati-online's recency memory served alone (when listed).
KNN_RECENT = "knn-recent"
_WARMUP = 20  # requests routed untimed before each timed stream
# Which planned (policy, method) serves each policy.
_PLANNED = {
    "gati": ("gati", "joint"),
    "confidence": ("confidence", "joint"),
    "entropy": ("entropy", "joint"),
    "apparate": ("apparate", "apparate"),
}
# (the kNN baseline is planned too, ("knn", "joint"); its stores are rebuilt, not saved)


@dataclasses.dataclass(frozen=True)
class Contender:
    """A policy ready to serve: its deployment, plan (if planned) and cache memory."""

    name: str
    deployment: Deployment
    plan: Plan | None
    cache_bytes: int


def load_or_plan(
    config: ml_collections.ConfigDict, workdir: Path, bank_dir: str | Path | None
) -> dict[str, Any]:
    """WORKDIR/plan.json when it was planned under the same settings, else a new planning."""
    path = workdir / "plan.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == json.loads(json.dumps(plan_settings(config))):
            logging.info(f"using the plans in {path}")
            return saved
    return run_planning(config, str(workdir), None if bank_dir is None else str(bank_dir))


def contenders_from_plans(
    config: ml_collections.ConfigDict,
    model: BaseModel,
    bank: CacheBank,
    dataset: data.Dataset,
    planned: dict[str, Any],
) -> dict[str, Contender]:
    """Every policy ready to serve, at its planned setting (see ``_PLANNED``)."""
    plans = {(p.policy, p.method): p for p in map(Plan.from_json, planned["methods"])}
    contenders = {
        "none": Contender("none", Deployment("none", (), (), (), np.zeros(0, np.float32)), None, 0)
    }
    for name, key in _PLANNED.items():
        plan = plans[key]
        contenders[name] = Contender(
            name, plan_deployment(plan, bank), plan, int(plan.tuning["memory_bytes"])
        )
    stores, head = knn_setup(config, model, bank, dataset)
    plan = plans[("knn", "joint")]
    chosen = [int(k.split("/")[0][1:]) for k in plan.candidates]
    contenders["knn"] = Contender(
        "knn",
        Deployment(
            "knn",
            tuple(chosen),
            tuple(head for _ in chosen),
            jax.device_put(tuple(stores[p] for p in chosen)),
            np.asarray(plan.thresholds, np.float32),
        ),
        plan,
        int(plan.tuning["memory_bytes"]),
    )
    oracle = best_per_position(bank)
    contenders["oracle"] = Contender(
        "oracle",
        deploy(bank, oracle, "oracle"),
        None,
        int(sum(c.metrics["param_bytes"] for c in oracle)),
    )
    if config.online.enabled and contenders["gati"].deployment.positions:
        # The same planned caches, learning online; its memory adds the replay windows.
        gati = contenders["gati"]
        window = int(config.online.window_bytes) * len(gati.deployment.positions)
        contenders[ONLINE] = dataclasses.replace(
            gati, name=ONLINE, cache_bytes=gati.cache_bytes + window
        )
    # --- apparate-online: every candidate ramp deployed (the planned ones active), its
    # memory all of them and its window of audited scores.
    if planned.get("apparate_ramps") is not None:
        ramps = RampSet.from_json(planned["apparate_ramps"])
        plan = contenders["apparate"].plan
        deployment = apparate_online.ramp_deployment(bank, ramps, plan.positions, plan.thresholds)
        window = int(config.online.apparate_window) * (9 * len(ramps.positions) + 1)
        contenders[APPARATE_ONLINE] = Contender(
            APPARATE_ONLINE, deployment, plan, int(sum(ramps.nbytes)) + window
        )
    # --- end apparate-online
    return contenders


def knn_recent_positions(explored: tuple[int, ...], memories: int) -> tuple[int, ...]:
    """Where knn-recent keeps its memories: the first ``memories`` (online.recency_positions)
    explored positions. No plan of gati's: a traditional cache knows the network, not which
    positions a learned-cache planner chose; the earliest position saves the most per hit
    and, on the shipped ResNet-18's plan, is where gati-online's memory sits too (its first
    deployed position, 0)."""
    return tuple(sorted(int(p) for p in explored))[: int(memories)]


def knn_recent(
    config: ml_collections.ConfigDict, model: BaseModel, positions: tuple[int, ...]
) -> tuple[Contender, OnlineLearner]:
    """knn-recent ready to serve: an online learner of recency memories alone at
    ``positions`` (OnlineLearner.memories_only: gati-online's memory, settings, audits and
    memory guard, no learned cache), and its contender, whose cache bytes are the memories'
    with their outcome windows. Its deployment only names the positions it may exit at (the
    rows' per-position hit rates and the all-miss timing); the learner serves it."""
    learner = OnlineLearner.memories_only(
        model, positions, OnlineSettings.from_config(config.online), int(config.serving.max_group)
    )
    # Policy "knn" for the all-miss timing's thresholds (a kNN lookup; the learner's slots
    # take no cache thresholds, and its memories there never hit).
    deployment = Deployment("knn", tuple(positions), (), (), np.zeros(0, np.float32))
    return Contender(KNN_RECENT, deployment, None, learner.nbytes()), learner


def serve_rounds(
    model: BaseModel,
    contenders: dict[str, Contender],
    workload,
    base: np.ndarray,
    serving: ml_collections.ConfigDict,
    rounds: int,
    window: int = 100,
    turn: int = 25,
    learners: dict[str, OnlineLearner] | None = None,
    compiled: dict[str, Router] | None = None,
    compile_s: dict[str, float] | None = None,
) -> dict[str, list[dict]]:
    """Serves the workload ``rounds`` times per policy; per-round summaries. With the virtual
    clock the policies' streams advance interleaved, ``turn`` groups at a time, the order
    rotating every round. A contender with an entry in ``learners`` is served by that online
    learner (reset before every round, its background work in its own loop's idle time).
    ``compiled`` keeps each contender's router for the next workload (filled here);
    ``compile_s`` gets the seconds each contender's programs took to compile, every bucket
    (filled on a contender's first workload)."""
    last = model.network.num_stages - 1
    learners = learners or {}
    compiled = {} if compiled is None else compiled
    compile_s = {} if compile_s is None else compile_s
    routers = {}
    for name, c in contenders.items():
        if name in learners:
            started = time.perf_counter()
            learners[name].warm_up()
            compile_s.setdefault(name, time.perf_counter() - started)
            routers[name] = learners[name].route
            continue
        started = time.perf_counter()
        # One router per contender for every workload: a new one would compile every
        # bucket again (measured: about 2 minutes of a 3-workload benchmark).
        if name not in compiled:
            compiled[name] = c.deployment.router(
                model, max_group=int(serving.max_group), compact=bool(serving.compaction)
            )
        router, dep = compiled[name], c.deployment

        def route(images, index, router=router, dep=dep):
            return router.route(dep.params, dep.thresholds, images, base_answer=base[index])

        for size in router.buckets:  # compile every bucket before anything is timed
            route(workload.images[:size], np.arange(size))
        compile_s.setdefault(name, time.perf_counter() - started)
        routers[name] = route
    names = list(contenders)
    results: dict[str, list[dict]] = {n: [] for n in names}
    # An online learner's memories may sit where no cache of its plan does.
    exit_positions = {
        n: learners[n].exit_positions if n in learners else contenders[n].deployment.positions
        for n in names
    }

    def loop(name):
        if name in learners:
            learners[name].reset()
        return serve_steps(
            routers[name],
            workload.images,
            arrivals=workload.arrivals,
            mode=serving.mode,
            max_group=int(serving.max_group),
            max_wait_s=float(serving.max_wait_ms) / 1e3,
            concurrency=int(serving.concurrency),
            clock=make_clock(serving.clock),
            progress=False,
            background=learners.get(name),
        )

    for r in tqdm(range(rounds), desc=f"serving {workload.name}", leave=False):
        order = names[r % len(names) :] + names[: r % len(names)]
        if serving.clock == "virtual":
            # All policies advance together, `turn` groups at a time: machine noise lands on
            # every policy's requests alike.
            served = serve_interleaved({name: loop(name) for name in order}, turn, seed=r)
        else:  # a real clock cannot pause a stream: one policy after another
            served = {}
            for name in order:
                # Untimed: the previous policy's program evicted this one's weights.
                for i in range(min(_WARMUP, len(workload))):
                    routers[name](workload.images[i : i + 1], np.arange(i, i + 1))
                served[name] = serve_interleaved({name: loop(name)})[name]
        for name in names:
            result = served[name]
            summary = summarize(result, workload.labels, base, exit_positions[name], last)
            summary["latencies_ms"] = 1e3 * result.latency
            summary["windows"] = windowed(result, workload.labels, base, window)
            # --- gati-online: exits over time, for the report's per-stream timelines
            summary["timeline"] = exit_timeline(result.exit_stage, result.hit, result.answer, base)
            # --- end gati-online
            if name in learners:
                summary["online"] = learners[name].summary()
            results[name].append(summary)
    return results


def batch1_programs(
    model: BaseModel,
    contenders: dict[str, Contender],
    learners: dict[str, OnlineLearner] | None = None,
) -> dict[str, Router]:
    """Each policy's program at batch 1 where it deploys a cache: a policy served by an
    online learner by its tapped program, the costlier of the two it serves with."""
    learners = learners or {}
    return {
        name: (
            learners[name].tapped_router(1)
            if name in learners
            else c.deployment.router(model, max_group=1)
        )
        for name, c in contenders.items()
        if c.deployment.positions
    }


def miss_overheads(
    model: BaseModel, contenders: dict[str, Contender], rounds: int, programs: dict[str, Router]
) -> dict[str, float]:
    """Per policy, what a request that exits nowhere pays over the plain network (batch 1, a
    fraction of it), on its program in ``programs`` (:func:`batch1_programs`): the price of
    its worst case beside its mean speedup."""
    names = list(contenders)
    measured = measure_miss_overheads(
        model,
        [contenders[name].deployment for name in names],
        1,
        rounds,
        [programs.get(name) for name in names],
    )
    return dict(zip(names, measured))


def _feasible(contender: Contender) -> bool:
    plan = contender.plan
    return True if plan is None else bool(plan.tuning.get("feasible", True))


def round_median(results: dict[str, list[dict]], name: str, key: str) -> float:
    """The median over ``name``'s rounds of each round's figure ``key``."""
    return float(np.median([r[key] for r in results[name]]))


def benchmark_rows(
    workload_name: str,
    results: dict[str, list[dict]],
    contenders: dict[str, Contender],
    misses: dict[str, float],
) -> list[dict[str, Any]]:
    """One row per policy. mean latency and throughput: medians over rounds of each round's
    figure (a noise burst on the machine hits one policy's round, and the median drops it);
    p50/p99: over every request of every round; speedup: none's mean latency / the policy's;
    compute speedup: the same for the mean compute time of a request's group, queueing left
    out; miss overhead: see :func:`miss_overheads`."""

    def median(name: str, key: str) -> float:
        return round_median(results, name, key)

    means = {name: median(name, "mean_latency_ms") for name in results}
    speedups = {name: means["none"] / m for name, m in means.items()}
    # Latency includes queueing at the stream's arrival rate, which grows faster than the
    # compute as the machine slows (a slower plain network queues its requests longer and
    # lifts every ratio over it); the compute ratio does not depend on the load.
    compute = {name: median(name, "mean_compute_ms") for name in results}
    oracle = speedups.get("oracle", float("nan"))
    rows = []
    for name, rounds in results.items():
        s, first = speedups[name], rounds[0]
        pooled = np.concatenate([r["latencies_ms"] for r in rounds])
        rows.append(
            {
                "workload": workload_name,
                "policy": name,
                "accuracy": first["accuracy"],
                "agreement": first["agreement"],
                "mean_latency_ms": means[name],
                "p50_latency_ms": float(np.percentile(pooled, 50)),
                "p99_latency_ms": float(np.percentile(pooled, 99)),
                "throughput_rps": median(name, "throughput_rps"),
                "speedup_vs_none": s,
                "mean_compute_ms": compute[name],
                "compute_speedup_vs_none": compute["none"] / compute[name],
                "miss_overhead": misses[name],
                "oracle_fraction": (s - 1) / (oracle - 1) if oracle > 1 else float("nan"),
                "hit_rate": first["hit_rate"],
                "cache_bytes": contenders[name].cache_bytes,
                # Did its plan meet the bound on the tuning data? (none: nothing to meet)
                "feasible": _feasible(contenders[name]),
            }
        )
    return rows


def online_figures(results: dict[str, list[dict]], workload_name: str) -> dict[str, Any]:
    """gati-online against static gati and none on one workload: speedups (ratios of median
    round means), p99 ratio (every request of every round pooled, with its 90% interval),
    whole-stream and worst-window agreement, and what the learner did
    (first round's updates, audits and guard switches)."""

    def median(name: str, key: str) -> float:
        return round_median(results, name, key)

    def pooled_p99(name):
        return float(np.percentile(np.concatenate([r["latencies_ms"] for r in results[name]]), 99))

    first = results[ONLINE][0]
    # How far the p99 ratio could move by chance: a 90% paired block-bootstrap interval.
    low, high = paired_quantile_ratio_interval(
        [r["latencies_ms"] for r in results[ONLINE]], [r["latencies_ms"] for r in results["gati"]]
    )
    figures = {
        "workload": workload_name,
        "speedup_vs_none": median("none", "mean_latency_ms") / median(ONLINE, "mean_latency_ms"),
        "speedup_vs_static_gati": (
            median("gati", "mean_latency_ms") / median(ONLINE, "mean_latency_ms")
        ),
        # Over every request of every round, as the rows' p99 and the interval's draws: a
        # ratio of the rounds' median p99s could fall outside its own interval.
        "p99_ratio_vs_static_gati": pooled_p99(ONLINE) / pooled_p99("gati"),
        "p99_ratio_low90": low,
        "p99_ratio_high90": high,
        "agreement": first["agreement"],
        "static_agreement": results["gati"][0]["agreement"],
        "min_window_agreement": min(w["agreement"] for w in first["windows"]),
        "static_min_window_agreement": min(w["agreement"] for w in results["gati"][0]["windows"]),
        "hit_rate": first["hit_rate"],
        "static_hit_rate": results["gati"][0]["hit_rate"],
    }
    figures.update(
        {
            k: v
            for k, v in first["online"].items()
            if k
            in (
                "updates",
                "trained",
                "accepted",
                "rejected",
                "audited",
                "tapped_groups",
                "alarmed_groups",
                "shifted_groups",
                "shift_exceeded",
                "trace_count",
                "chunk_ms_p50",
                "chunk_ms_max",
            )
        }
    )
    figures["guard_events"] = first["online"]["guard_events"]
    figures["shift_events"] = first["online"]["shift_events"]
    figures["window_bytes"] = first["online"]["window_bytes"]
    figures["update_log"] = first["online"]["update_log"]
    figures["chunk_ms_by_kind"] = first["online"]["chunk_ms_by_kind"]
    # --- gati-online: its recency memories and the timelines (first round)
    for key in ("memory_bytes", "memory_positions", "memory_log", "memory_guard_events"):
        figures[key] = first["online"].get(key, [])
    figures["timeline"] = {name: results[name][0]["timeline"] for name in ("gati", ONLINE)}
    # --- end gati-online
    return figures


# The threshold policies gati's design space contains (issue: a learned cache never loses to
# a threshold at the same bound); each is compared with gati request by request.
THRESHOLD_POLICIES = ("confidence", "entropy", "apparate")


def threshold_comparison(results: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """gati against each threshold policy served beside it: gati's speedup over it (its mean
    latency over gati's, every request of every round pooled), a 90% paired block-bootstrap
    interval of that ratio, and the verdict the interval allows ('ahead', 'behind', or
    'level' when it holds 1)."""
    if "gati" not in results:
        return {}
    return {
        name: paired_speedup(results[name], results["gati"])
        for name in THRESHOLD_POLICIES
        if name in results
    }


def paired_speedup(reference: list[dict], served: list[dict]) -> dict[str, Any]:
    """``served``'s speedup over ``reference`` (per-round results of the same stream): the
    mean latencies' ratio, every request of every round pooled, its 90% paired interval and
    the verdict ('ahead', 'behind', or 'level' when the interval holds 1)."""
    theirs = [r["latencies_ms"] for r in reference]
    ours = [r["latencies_ms"] for r in served]
    # Two plans a few percent apart differ by less than a noisy stream's bursts; the same
    # requests in the same order pair the bursts, so the interval shows the plans.
    low, high = paired_quantile_ratio_interval(theirs, ours, quantile=None)
    # Pooled like the interval's draws: a ratio of the rounds' medians can fall outside it.
    ratio = float(np.mean(np.concatenate(theirs))) / float(np.mean(np.concatenate(ours)))
    verdict = "ahead" if low > 1 else "behind" if high < 1 else "level"
    return {"speedup": ratio, "low90": low, "high90": high, "verdict": verdict}


CONTROL_SUFFIX = "-copy"  # the A/A control's second copy (benchmark.control)


def with_control(contenders: dict[str, Contender], control: str) -> dict[str, Contender]:
    """``contenders`` and, when ``control`` is one of them, its copy (``control`` +
    :data:`CONTROL_SUFFIX`): the same deployment under another name, which
    :func:`serve_rounds` serves through a router of its own (it keeps one per name)."""
    if not control or control not in contenders:
        return dict(contenders)
    name = control + CONTROL_SUFFIX
    return {**contenders, name: dataclasses.replace(contenders[control], name=name)}


def control_figures(results: dict[str, list[dict]], control: str) -> dict[str, Any] | None:
    """The A/A control on one workload (removes the copy from ``results``): the copy's
    speedup over the policy it copies, as :func:`paired_speedup` reads it."""
    copy = results.pop(control + CONTROL_SUFFIX, None)
    if copy is None:
        return None
    return {"policy": control, **paired_speedup(results[control], copy)}


def knn_recent_figures(rounds: list[dict]) -> dict[str, Any]:
    """knn-recent on one workload (first round): hits, agreement (whole stream and worst
    window), when its memory first served, audits, memory-guard events and bytes."""
    first = rounds[0]
    learned = first["online"]
    admitted = next((m for m in learned["memory_log"] if np.isfinite(m["threshold"])), None)
    return {
        "hit_rate": first["hit_rate"],
        "agreement": first["agreement"],
        "min_window_agreement": min(w["agreement"] for w in first["windows"]),
        "first_served": None if admitted is None else admitted["served"],
        "audited": learned["audited"],
        **{
            key: learned[key]
            for key in ("memory_bytes", "memory_positions", "memory_log", "memory_guard_events")
        },
    }


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a boolean mask."""
    edges = np.flatnonzero(np.diff(np.r_[0, np.asarray(mask, np.int8), 0]))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _alarm_spans(events: list[dict[str, Any]], length: int) -> list[tuple[int, int]]:
    """[rise, fall) of each input-shift alarm (to the stream's end if it never fell)."""
    rises = [e["served"] for e in events if e["on"]]
    falls = [e["served"] for e in events if not e["on"]]
    return [(a, falls[i] if i < len(falls) else length) for i, a in enumerate(rises)]


def run_benchmark(
    config: ml_collections.ConfigDict, workdir: str, bank_dir: str | None = None
) -> list[dict[str, Any]]:
    """Plans every policy, serves every workload, writes benchmark.json and plots."""
    validate_config(config)
    started = time.time()
    clock = StepClock()
    out = Path(workdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    model = load_base_model(config.caches.checkpoint)
    dataset = data.load_dataset(model_data_config(model, config.data.data_dir))
    bank = load_bank(bank_dir or out / "cache_bank")
    planned = load_or_plan(config, out, bank_dir)
    contenders = contenders_from_plans(config, model, bank, dataset, planned)
    names = [*config.benchmark.policies]
    learners = {}
    if KNN_RECENT in names and int(config.online.recency_positions) == 0:
        logging.warning(f"{KNN_RECENT} not served: online.recency_positions is 0 (no memory)")
        names.remove(KNN_RECENT)
    if KNN_RECENT in names:
        positions = knn_recent_positions(
            tuple(bank.info["positions"]), int(config.online.recency_positions)
        )
        contenders[KNN_RECENT], learners[KNN_RECENT] = knn_recent(config, model, positions)
    if ONLINE in contenders and "gati" in names:
        names.insert(names.index("gati") + 1, ONLINE)
    if APPARATE_ONLINE in names and APPARATE_ONLINE not in contenders:  # an old plan.json
        logging.warning(f"{APPARATE_ONLINE} not served: the plans hold no candidate ramps")
        names.remove(APPARATE_ONLINE)
    contenders = {n: contenders[n] for n in names}
    control = str(config.benchmark.control)
    if control and control not in contenders:
        logging.warning(f"no A/A control: benchmark.control '{control}' is not served")
    if ONLINE in contenders:
        settings = OnlineSettings.from_config(config.online)
        # In-distribution inputs for the shift detector: the selectors' calibration half of
        # the validation split (clean images the caches were calibrated on).
        reference = (
            dataset.validation.images[-settings.shift_reference :]
            if settings.shift_detect
            else None
        )
        learners[ONLINE] = OnlineLearner(
            model,
            contenders[ONLINE].deployment,
            settings,
            int(config.serving.max_group),
            reference_images=reference,
        )
        # --- gati-online: its memory is the caches' and what the learner holds (replay
        # windows while the caches train, recency memories)
        contenders[ONLINE] = dataclasses.replace(
            contenders[ONLINE],
            cache_bytes=contenders["gati"].cache_bytes + learners[ONLINE].nbytes(),
        )
        # --- end gati-online
    if APPARATE_ONLINE in contenders:  # the same audit budget as gati-online
        learners[APPARATE_ONLINE] = apparate_online.ApparateOnline(
            model,
            contenders[APPARATE_ONLINE].deployment,
            RampSet.from_json(planned["apparate_ramps"]),
            apparate_online.ApparateSettings.from_config(config),
            int(config.serving.max_group),
        )
    clock.lap("setup")
    programs = batch1_programs(model, contenders, learners)
    misses = miss_overheads(model, contenders, 5 * int(config.planner.latency_repeats), programs)
    clock.lap("miss_overheads")
    miss_programs = all_miss_programs(
        model,
        {name: (contenders[name].deployment, r) for name, r in programs.items()},
        plain_program(model),
        jnp.zeros((1, *model.network.input_shape), jnp.float32),
    )
    kernels = all_miss_kernels(miss_programs)
    # The same programs in parts (their stages, lookups and the rest, as XLA's kernels).
    kernel_profile = kernel_profile_ms(
        miss_programs, rounds=max(4, int(config.planner.latency_repeats) // 4)
    )
    clock.lap("kernel_profile")
    miss_figures = {
        name: (list(contenders[name].deployment.positions), misses[name]) for name in programs
    }
    sweep = planned["sweep"]
    split = getattr(dataset, config.workload.split)
    rows, latencies, streams, windows, online, corrupted = [], {}, {}, {}, {}, {}
    recent: dict[str, dict[str, Any]] = {}  # workload -> knn-recent's figures
    exits: dict[str, dict[str, dict[str, float]]] = {}  # workload -> policy -> position
    apparate_tunings: dict[str, Any] = {}
    against: dict[str, dict[str, Any]] = {}  # workload -> threshold policy -> gati vs it
    controls: dict[str, dict[str, Any] | None] = {}  # workload -> the A/A control
    compiled: dict[str, Router] = {}
    compile_s: dict[str, float] = {}
    for name in config.benchmark.workloads:
        section = ml_collections.ConfigDict(config.workload.to_dict())
        section.name = name
        workload = make_workload(section, split)
        if name == config.benchmark.workloads[0]:
            scaling_images = workload.images[: int(config.benchmark.scaling_requests)]
        corrupted[name] = workload.corrupted
        streams[name] = workload_stats(
            workload, int(config.workload.window), model.network.num_classes
        )
        # --- gati-online: where scenes change (video), for the report's timelines
        streams[name]["scene_cuts"] = scene_cuts(workload).tolist()
        # --- end gati-online
        # The base network's answers to the requests as served (shift corrupts the images).
        base = predict_logits(model, workload.images).argmax(-1).astype(np.int32)
        results = serve_rounds(
            model,
            with_control(contenders, control),
            workload,
            base,
            config.serving,
            int(config.benchmark.rounds),
            int(config.workload.window),
            int(config.benchmark.turn),
            learners,
            compiled,
            compile_s,
        )
        if ONLINE in results:
            online[name] = online_figures(results, name)
        if KNN_RECENT in results:
            recent[name] = knn_recent_figures(results[KNN_RECENT])
        clock.lap(f"serve {name}")  # its first workload compiles every policy's programs
        controls[name] = control_figures(results, control)
        against[name] = threshold_comparison(results)
        if APPARATE_ONLINE in results:  # what it tuned, first round
            apparate_tunings[name] = results[APPARATE_ONLINE][0]["online"]
        windows[name] = {p: rs[0]["windows"] for p, rs in results.items()}
        exits[name] = {p: rs[0]["hit_rate_per_position"] for p, rs in results.items()}
        rows.extend(benchmark_rows(name, results, contenders, misses))
        latencies[name] = {
            p: np.concatenate([r["latencies_ms"] for r in rs]) for p, rs in results.items()
        }
    compile_s.pop(control + CONTROL_SUFFIX, None)  # the control's copy is no policy
    logging.info(
        "compile time of each policy's programs (every bucket): "
        + ", ".join(f"{n} {t:.1f} s" for n, t in compile_s.items())
    )
    scaling_dep = (
        contenders["gati"].deployment if "gati" in contenders else contenders["none"].deployment
    )
    scaling = device_scaling(
        model,
        scaling_dep,
        scaling_images,
        tuple(int(d) for d in config.benchmark.device_counts),
        int(config.benchmark.scaling_group),
    )
    clock.lap("device_scaling")
    report = {
        "rows": rows,
        "workloads": streams,
        "sweep": sweep,
        "windows": windows,
        "exits": exits,
        "stage_latency_s": list(bank.info["stage_latency_s"]),
        "device_scaling": scaling,
        "online": online,
        "apparate_online": apparate_tunings,
        "knn_recent": recent,
        "gati_vs_thresholds": against,
        "control": controls,
        "compile_s": compile_s,
        "convolution_kernels": kernels,
        "kernel_profile_ms": kernel_profile,
        "plans": {n: c.plan.to_json() for n, c in contenders.items() if c.plan},
        "settings": {
            "eps": float(config.planner.eps),
            "memory_budget_bytes": float(config.planner.memory_budget_bytes),
            "serving": config.serving.to_dict(),
            "rounds": int(config.benchmark.rounds),
            "backend": jax.default_backend(),
        },
        "seconds": round(time.time() - started, 1),
        "step_seconds": clock.seconds,
        "step_compile_seconds": clock.compiling,
        # Programs compiled again and loaded instead (gati_jax/compilation.py).
        "programs_loaded": programs_loaded(),
        # The settings these results were served under, written with them
        # (scripts/summarize_runs.py compares them across runs).
        "config": json.loads(config.to_json_best_effort()),
    }
    (out / "benchmark.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "benchmark_details.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_latency_cdf(latencies, out / "latency_cdf.png")
    if online:
        spans = {
            w: [
                *((a, b, "corrupted inputs") for a, b in _runs(corrupted[w])),
                *(
                    (a, b, "input-shift alarm")
                    for a, b in _alarm_spans(online[w]["shift_events"], corrupted[w].size)
                ),
            ]
            for w in online
        }
        plot_hit_rate_over_time(
            {w: windows[w] for w in online},
            out / "agreement_over_time.png",
            metric="agreement",
            policies=("gati", ONLINE),
            floor=1 - float(config.planner.eps),
            spans=spans,
        )
        plot_hit_rate_over_time(
            {w: windows[w] for w in online},
            out / "online_hit_rate_over_time.png",
            policies=("gati", ONLINE),
            spans=spans,
        )
    # The headline: what was measured, per policy and workload (the planner's predictions
    # are plan_tradeoff.png, written by the planning job).
    plot_measured_tradeoff(rows, float(config.planner.eps), out / "agreement_vs_speedup.png")
    plot_exit_depth(exits, bank.info["stage_latency_s"], out / "exit_depth.png")
    for name, stats in streams.items():
        logging.info(
            f"{name}: P(same label as previous) {stats['p_same_as_previous']:.3f}, "
            f"window entropy {stats['mean_window_entropy_bits']:.2f} bits"
        )
    logging.info(format_table([{k: v for k, v in r.items()} for r in rows]))
    for line in describe_kernels(kernels):
        logging.info(line)
    for line in describe_kernel_profile(kernel_profile, miss_figures):
        logging.info(line)
    logging.info(
        f"serving throughput vs devices ({scaling_dep.policy}, closed loop, "
        f"{jax.devices()[0].platform}):"
    )
    logging.info(format_table(scaling))
    for name, summary in apparate_tunings.items():
        logging.info(
            f"{APPARATE_ONLINE} on {name}: {summary['audited']} audited, "
            f"{summary['tunings']} tunings {summary['tuning_reasons']}, "
            f"{summary['ramp_changes']} ramp changes, ends at positions "
            f"{summary['final_positions']}"
        )
    for line in comparison_lines(against, controls):
        logging.info(line)
    for name, figures in recent.items():
        logging.info(
            f"{KNN_RECENT} on {name}: hit rate {figures['hit_rate']:.3f}, agreement "
            f"{figures['agreement']:.4f} (worst window {figures['min_window_agreement']:.3f}), "
            f"first served after {figures['first_served']} requests, {figures['audited']} "
            f"audited, memory {sum(figures['memory_bytes'])} bytes at positions "
            f"{figures['memory_positions']}"
        )
    for name, figures in online.items():
        logging.info(
            f"online learning on {name}: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in figures.items()
                if not isinstance(v, (list, dict))
            )
        )
    clock.lap("write_and_plot")  # after the JSON is written: in the log's figures alone
    logging.info(
        f"wrote {out / 'benchmark.json'}, latency_cdf.png, agreement_vs_speedup.png"
        f"{', agreement_over_time.png, online_hit_rate_over_time.png' if online else ''} in "
        f"{time.time() - started:.1f} s ("
        + ", ".join(f"{name} {s} s" for name, s in clock.seconds.items())
        + ")"
    )
    return rows
