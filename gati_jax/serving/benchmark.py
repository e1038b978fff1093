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
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gati_jax import data
from gati_jax.caches.bank import CacheBank, load_bank
from gati_jax.caches.recording import record_activations
from gati_jax.config import validate_config
from gati_jax.data.workloads import make_workload, workload_stats
from gati_jax.evaluation import model_data_config
from gati_jax.inference import BaseModel, predict_logits
from gati_jax.planner import search
from gati_jax.planner.build import (build_knn_instance, knn_lookups, knn_stores,
                                    plan_candidates)
from gati_jax.planner.pipeline import (PlanningData, build_policy_instances,
                                       record_planning_data, run_methods)
from gati_jax.planner.plan import Plan, plan_deployment, plan_from_choices
from gati_jax.planner.profiles import candidate_lookups, load_or_measure
from gati_jax.plotting import plot_latency_cdf, plot_plan_tradeoff
from gati_jax.runtime.deployment import Deployment, best_per_position, deploy
from gati_jax.runtime.knn import KnnHead
from gati_jax.serving.clock import make_clock
from gati_jax.serving.loop import serve
from gati_jax.serving.summary import summarize, windowed
from gati_jax.tables import format_table
from gati_jax.training.checkpointing import load_base_model

POLICIES = ("none", "gati", "confidence", "entropy", "apparate", "knn", "oracle")
_WARMUP = 20  # requests routed untimed before each timed stream
# Which planned (policy, method) serves each policy.
_PLANNED = {"gati": ("gati", "joint"), "confidence": ("confidence", "joint"),
            "entropy": ("entropy", "joint"), "apparate": ("apparate", "greedy")}


@dataclasses.dataclass(frozen=True)
class Contender:
    """A policy ready to serve: its deployment, plan (if planned) and cache memory."""

    name: str
    deployment: Deployment
    plan: Plan | None
    cache_bytes: int


def plan_contenders(config: ml_collections.ConfigDict, model: BaseModel, bank: CacheBank,
                    dataset: data.Dataset, workdir: Path) -> tuple[dict[str, Contender],
                                                                   list[dict[str, Any]]]:
    """Plans every policy for the config's bound and budget; returns them and the eps sweep."""
    planner, policy = config.planner, config.policy
    planning = record_planning_data(model, dataset, bank, int(config.caches.test_examples),
                                    int(config.caches.record_batch_size))
    positions = tuple(int(p) for p in bank.info["positions"])
    factors = {int(p): int(f) for p, f in bank.info["pool_factors"].items()}
    capacity = min(int(policy.knn_capacity), len(dataset.train.labels))
    # kNN stores hold train-split activations: never the requests they are tuned or tested on.
    store_data = record_activations(model, dataset.train.images[:capacity],
                                    dataset.train.labels[:capacity], positions=positions,
                                    pool_factors=factors, desc="recording kNN stores")
    head = KnnHead(int(policy.knn_grid), int(policy.knn_neighbours))
    stores = knn_stores(store_data, positions, capacity, head.grid)
    candidates = plan_candidates(bank, planner.candidates)
    lookups = candidate_lookups(bank, candidates, ("gati", "confidence")) | knn_lookups(stores,
                                                                                          head)
    profile = load_or_measure(planner.profile or workdir / "profile.json", model, lookups,
                              int(planner.group_size), int(planner.latency_repeats),
                              bool(planner.remeasure))
    instances = build_policy_instances(bank, candidates, planning, profile, planner)
    kw = dict(eps=float(planner.eps), budget_bytes=float(planner.memory_budget_bytes),
              confidence=float(planner.confidence))
    knn_tuning = build_knn_instance(stores, planning.tuning, profile, head,
                                    grid=int(planner.grid), **kw)
    grids = {o.key: o.grid for opts in knn_tuning.options for o in opts}
    knn_test = build_knn_instance(stores, planning.test, profile, head, grid=grids, **kw)

    def plan_all(eps: float) -> dict[str, Plan]:
        plans = {p.policy: p for p in run_methods(instances, eps)
                 if (p.policy, p.method) in _PLANNED.values()}
        tuning, test = (dataclasses.replace(i, eps=eps) for i in (knn_tuning, knn_test))
        starts = [search.METHODS[m](tuning) for m in ("single", "independent", "greedy")]
        plans["knn"] = plan_from_choices(tuning, search.joint(tuning, starts), "knn", "joint",
                                         test)
        return plans

    plans = plan_all(float(planner.eps))
    contenders = {"none": Contender("none", Deployment("none", (), (), (), np.zeros(0, np.float32)),
                                    None, 0)}
    for name in ("gati", "confidence", "entropy", "apparate"):
        contenders[name] = Contender(name, plan_deployment(plans[name], bank), plans[name],
                                     int(plans[name].tuning["memory_bytes"]))
    knn_plan = plans["knn"]
    chosen = [int(k.split("/")[0][1:]) for k in knn_plan.candidates]
    contenders["knn"] = Contender("knn", Deployment(
        "knn", tuple(chosen), tuple(head for _ in chosen),
        jax.device_put(tuple(stores[p] for p in chosen)),
        np.asarray(knn_plan.thresholds, np.float32)), knn_plan,
        int(knn_plan.tuning["memory_bytes"]))
    oracle = best_per_position(bank)
    contenders["oracle"] = Contender("oracle", deploy(bank, oracle, "oracle"), None,
                                     int(sum(c.metrics["param_bytes"] for c in oracle)))
    sweep = []
    for eps in sorted({float(e) for e in planner.sweep_eps} | {float(planner.eps)}):
        for name, plan in (plans if eps == float(planner.eps) else plan_all(eps)).items():
            sweep.append({"eps": eps, "policy": name, "method": plan.method,
                          "speedup": plan.tuning["speedup"],
                          "test_agreement": plan.test["agreement"]})
    return contenders, sweep


def serve_rounds(model: BaseModel, contenders: dict[str, Contender], workload, base: np.ndarray,
                 serving: ml_collections.ConfigDict, rounds: int,
                 window: int = 100) -> dict[str, list[dict]]:
    """Serves the workload ``rounds`` times per policy in rotating order; per-round summaries."""
    last = model.network.num_stages - 1
    routers = {}
    for name, c in contenders.items():
        router = c.deployment.router(model, max_group=int(serving.max_group))
        dep = c.deployment

        def route(images, index, router=router, dep=dep):
            return router.route(dep.params, dep.thresholds, images, base_answer=base[index])
        for size in router.buckets:  # compile every bucket before anything is timed
            route(workload.images[:size], np.arange(size))
        routers[name] = route
    names = list(contenders)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in tqdm(range(rounds), desc=f"serving {workload.name}", leave=False):
        for name in names[r % len(names):] + names[:r % len(names)]:
            # Untimed: the previous policy's program evicted this one's weights from the caches.
            for i in range(min(_WARMUP, len(workload))):
                routers[name](workload.images[i:i + 1], np.arange(i, i + 1))
            result = serve(routers[name], workload.images, arrivals=workload.arrivals,
                           mode=serving.mode, max_group=int(serving.max_group),
                           max_wait_s=float(serving.max_wait_ms) / 1e3,
                           concurrency=int(serving.concurrency),
                           clock=make_clock(serving.clock), progress=False)
            summary = summarize(result, workload.labels, base, contenders[name].deployment.positions,
                                last)
            summary["latencies_ms"] = 1e3 * result.latency
            summary["windows"] = windowed(result, workload.labels, base, window)
            results[name].append(summary)
    return results


def benchmark_rows(workload_name: str, results: dict[str, list[dict]],
                   contenders: dict[str, Contender]) -> list[dict[str, Any]]:
    """One row per policy over all rounds pooled: latency statistics of every served request,
    speedup = none's mean latency / the policy's (rounds interleave the policies, so both
    means saw the same machine noise), throughput the median over rounds."""
    pooled = {name: np.concatenate([r["latencies_ms"] for r in rounds])
              for name, rounds in results.items()}
    none_mean = float(pooled["none"].mean())
    speedups = {name: none_mean / float(lat.mean()) for name, lat in pooled.items()}
    oracle = speedups.get("oracle", float("nan"))
    rows = []
    for name, rounds in results.items():
        s, lat, first = speedups[name], pooled[name], rounds[0]
        rows.append({
            "workload": workload_name, "policy": name, "accuracy": first["accuracy"],
            "agreement": first["agreement"], "mean_latency_ms": float(lat.mean()),
            "p50_latency_ms": float(np.percentile(lat, 50)),
            "p99_latency_ms": float(np.percentile(lat, 99)),
            "throughput_rps": float(np.median([r["throughput_rps"] for r in rounds])),
            "speedup_vs_none": s,
            "oracle_fraction": (s - 1) / (oracle - 1) if oracle > 1 else float("nan"),
            "hit_rate": first["hit_rate"], "cache_bytes": contenders[name].cache_bytes})
    return rows


def run_benchmark(config: ml_collections.ConfigDict, workdir: str,
                  bank_dir: str | None = None) -> list[dict[str, Any]]:
    """Plans every policy, serves every workload, writes benchmark.json and plots."""
    validate_config(config)
    started = time.time()
    out = Path(workdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    model = load_base_model(config.caches.checkpoint)
    dataset = data.load_dataset(model_data_config(model, config.data.data_dir))
    bank = load_bank(bank_dir or out / "cache_bank")
    contenders, sweep = plan_contenders(config, model, bank, dataset, out)
    contenders = {n: contenders[n] for n in config.benchmark.policies}
    split = getattr(dataset, config.workload.split)
    split_base = predict_logits(model, split.images).argmax(-1).astype(np.int32)
    rows, latencies, streams, windows = [], {}, {}, {}
    for name in config.benchmark.workloads:
        section = ml_collections.ConfigDict(config.workload.to_dict())
        section.name = name
        workload = make_workload(section, split)
        streams[name] = workload_stats(workload, int(config.workload.window),
                                       model.network.num_classes)
        base = split_base[workload.source_index]
        results = serve_rounds(model, contenders, workload, base, config.serving,
                               int(config.benchmark.rounds), int(config.workload.window))
        windows[name] = {p: rs[0]["windows"] for p, rs in results.items()}
        rows.extend(benchmark_rows(name, results, contenders))
        latencies[name] = {p: np.concatenate([r["latencies_ms"] for r in rs])
                           for p, rs in results.items()}
    report = {"rows": rows, "workloads": streams, "sweep": sweep, "windows": windows,
              "plans": {n: c.plan.to_json() for n, c in contenders.items() if c.plan},
              "settings": {"eps": float(config.planner.eps),
                           "memory_budget_bytes": float(config.planner.memory_budget_bytes),
                           "serving": config.serving.to_dict(),
                           "rounds": int(config.benchmark.rounds),
                           "backend": jax.default_backend()},
              "seconds": round(time.time() - started, 1)}
    (out / "benchmark.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "benchmark_details.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_latency_cdf(latencies, out / "latency_cdf.png")
    plot_plan_tradeoff(sweep, out / "agreement_vs_speedup.png")
    for name, stats in streams.items():
        print(f"{name}: P(same label as previous) {stats['p_same_as_previous']:.3f}, "
              f"window entropy {stats['mean_window_entropy_bits']:.2f} bits")
    print(format_table([{k: v for k, v in r.items()} for r in rows]))
    print(f"wrote {out / 'benchmark.json'}, latency_cdf.png, agreement_vs_speedup.png in "
          f"{report['seconds']} s")
    return rows
