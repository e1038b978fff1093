"""Loads what the router benchmark needs, runs it and prints its tables."""

from __future__ import annotations

from typing import Any

from absl import logging

from gati_jax import data
from gati_jax.caches.bank import load_bank
from gati_jax.evaluation import model_data_config
from gati_jax.experiments.kernel_profile import describe_kernel_profile
from gati_jax.experiments.router_benchmark import benchmark_router
from gati_jax.measure import describe_kernels
from gati_jax.planner.plan import load_plan, plan_deployment
from gati_jax.tables import format_table
from gati_jax.training.checkpointing import load_base_model


def run_router_benchmark(
    checkpoint: str,
    bank_dir: str,
    sparse_positions: tuple[int, ...],
    repeats: int,
    stream: int,
    plan_dir: str | None = None,
) -> dict[str, Any]:
    """Runs :func:`benchmark_router` on test images and prints every table."""
    model = load_base_model(checkpoint)
    bank = load_bank(bank_dir)
    dataset = data.load_dataset(model_data_config(model))
    planned = None
    if plan_dir:
        planned = plan_deployment(*load_plan(plan_dir))
    result = benchmark_router(
        model, bank, dataset.test.images[:stream], sparse_positions, repeats, planned=planned
    )
    logging.info(f"backend {result['backend']} ({result['device_kind']}), batch 1 unless stated")
    logging.info(f"plain compiled network: {result['plain_network_ms']:.3f} ms")
    for name, row in result["all_miss_overhead"].items():
        logging.info(
            f"router, every lookup missing, {name} {row['positions']}: "
            f"{row['router_all_miss_ms']:.3f} ms, overhead {100 * row['overhead']:+.1f}% "
            f"(alternating with the other programs call by call: "
            f"{100 * row['overhead_alternating']:+.1f}%)"
        )
    for line in describe_kernels(result.get("convolution_kernels")):
        logging.info(line)
    inside = describe_kernel_profile(
        result.get("kernel_profile_ms"),
        {n: (r["positions"], r["overhead"]) for n, r in result["all_miss_overhead"].items()},
    )
    if inside:
        logging.info("\n" + "\n".join(inside))
    logging.info(
        "\nforced exits (router vs Python loop vs stage-cost models; stage_sum: separately "
        "jitted stages and lookups; profile: the planner's model, compiled prefixes + "
        f"router charge {result['router_charge_ms']:.3f} ms + "
        f"{result.get('router_per_cache_ms', 0.0):.3f} ms per deployed cache + marginal "
        "lookups passed + the exit, brought to the speed of the plain network timed in the "
        f"same rounds, {result.get('forced_exit_plain_ms', float('nan')):.3f} ms; "
        "same_round: that model with its stage prefixes timed in these rounds; "
        "all_same_round: with every term timed in these rounds, its two charges "
        f"({result['same_round_charges_ms'][0]:.3f} and "
        f"{result['same_round_charges_ms'][1]:.3f} ms) fitted to the rows 'no exit' and "
        "the first exit, which it matches unless a charge or a marginal cost came out "
        "below 0 and was clamped):"
    )
    logging.info(format_table(result["forced_exits"]))
    logging.info("\ngroup sizes (best cache at every position, gati at its 99% thresholds):")
    logging.info(format_table(result["group_sizes"]))
    if "group_sizes_planned" in result:
        logging.info("\ngroup sizes (the plan's caches at the plan's thresholds):")
        logging.info(format_table(result["group_sizes_planned"]))
    s = result["stream_batch1"]
    logging.info(
        f"\nbatch-1 stream of {s['requests']} test images at the 99% thresholds: plain "
        f"{s['plain_mean_ms']:.3f} ms, router {s['gati99_mean_ms']:.3f} ms, speedup "
        f"{s['speedup']:.2f}x; exits per stage {s['exit_histogram']}"
    )
    logging.info(
        "\nthe serving path on that stream (compiled: the program on an image already on the "
        "device; fetched: and its answer copied to the host; sent: and the image sent from "
        "the host; route: route() from a host image, checks and padding included; served: "
        "the serving loop's compute per request, one at a time):"
    )
    logging.info(format_table(result["serving_path"]))
    return result
