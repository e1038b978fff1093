"""The main job's report: report.md (tables a person reads), report.json (every figure), plots.

It only reads what the phases wrote (exploration.json, plan.json, benchmark_details.json), so
every figure in it comes from those runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from gati_jax.experiments.kernel_profile import (
    KERNEL_PROFILE_NOTE,
    kernel_profile_rows,
    kernel_profile_summaries,
)
from gati_jax.experiments.online_timeline import learner_events, plot_online_timeline
from gati_jax.experiments.plots import plot_hit_rate_over_time, plot_position_hit_rates
from gati_jax.measure import describe_kernels
from gati_jax.tables import format_table, markdown_table


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the phase that writes it again")
    return json.loads(path.read_text())


ONLINE_COLUMNS = (
    "workload",
    "speedup_vs_none",
    "speedup_vs_static_gati",
    "p99_ratio_vs_static_gati",
    "p99_ratio_low90",
    "p99_ratio_high90",
    "agreement",
    "static_agreement",
    "min_window_agreement",
    "static_min_window_agreement",
    "hit_rate",
    "static_hit_rate",
    "updates",
    "trained",
    "accepted",
    "rejected",
    "audited",
)
# Where gati-online's background time went (first round), from chunk_ms_by_kind.
CHUNK_KINDS = ("observe", "memory", "audit", "update")


def _timeline_lines(online: dict[str, Any], workloads: dict[str, Any]) -> list[str]:
    """Per stream, what online_timeline.png shows in words: scene cuts, when a recency
    memory first served and at what threshold, and the learner's events."""
    lines = []
    for name, figures in online.items():
        events = learner_events(figures)
        cuts = workloads.get(name, {}).get("scene_cuts", [])
        admitted = next(
            (
                m
                for m in figures.get("memory_log", [])
                if m["threshold"] is not None and np.isfinite(m["threshold"])
            ),
            None,
        )
        memory = (
            "its memory never served"
            if admitted is None
            else f"its memory first served after {admitted['served']} requests (similarity "
            f"{admitted['threshold']:.3f}, {admitted['evidence']:.0f} would-be hits of "
            f"evidence), {len(events['memory'])} threshold changes in all"
        )
        lines.append(
            f"- {name}: {len(cuts)} scene cuts; {memory}; updates accepted "
            f"{len(events['accepted'])}, rejected {len(events['rejected'])}; guard "
            f"switches {len(events['guard'])}; input-shift alarms "
            f"{len(events['shift'])}; memory {sum(figures.get('memory_bytes', []))} "
            "bytes."
        )
    return lines


def _compile_lines(compile_s: dict[str, float]) -> list[str]:
    """One line: the seconds each policy's served programs took to compile (every bucket)."""
    if not compile_s:
        return []
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in compile_s.items())
    return [f"Compile time of each policy's programs, every group-size bucket: {parts}.", ""]


def _knn_recent_lines(recent: dict[str, Any]) -> list[str]:
    """Per stream, what the knn-recent row's memory did (first round): when it first served,
    its worst window, audits, memory-guard switches and bytes."""
    if not recent:
        return []
    lines = [
        "knn-recent is the traditional recency cache: gati-online's recency memory served "
        "alone (no learned cache), calibrated, audited and guarded the same way; its "
        "cache_bytes are the memory's with its outcome window (first round):",
        "",
    ]
    for name, f in recent.items():
        served = (
            "its memory never served"
            if f["first_served"] is None
            else f"its memory first served after {f['first_served']} requests"
        )
        lines.append(
            f"- {name}: {served}; hit rate {f['hit_rate']:.3f} at agreement "
            f"{f['agreement']:.4f} (worst window {f['min_window_agreement']:.3f}); "
            f"{f['audited']} audited; memory-guard events {len(f['memory_guard_events'])}; "
            f"memory at positions {f['memory_positions']}, {sum(f['memory_bytes'])} bytes."
        )
    return [*lines, ""]


def _sample_note(online: ml_collections.ConfigDict) -> str:
    """Where the audit sample is drawn, in the report's words."""
    if int(online.recency_positions) > 0:
        return (
            f"drawn among all requests, every group lightly tapped; a recency memory's "
            f"hits audited at {online.recency_audit_fraction:g}"
        )
    return f"drawn among the {online.tap_fraction:g} whose activations were tapped"


def _chunk_rows(online: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workload, the background chunks' total ms and count by kind."""
    rows = []
    for name, figures in online.items():
        kinds = figures.get("chunk_ms_by_kind", {})
        row = {"workload": name}
        for kind in CHUNK_KINDS:
            got = kinds.get(kind, {})
            row[f"{kind}_ms"] = got.get("total", got.get("p50", 0.0) * got.get("count", 0))
            row[f"{kind}_chunks"] = got.get("count", 0)
        rows.append(row)
    return rows


def _online_section(
    config: ml_collections.ConfigDict,
    online: dict[str, Any],
    workloads: dict[str, Any] | None = None,
) -> list[str]:
    """The report's online-learning section: gati-online against static gati per workload,
    and per stream its timeline (online_timeline.png)."""
    if not online:
        why = (
            "online learning was off (`online.enabled = False`)"
            if not config.online.enabled
            else "the gati plan deploys no cache to learn"
        )
        return [f"There are no gati-online rows: {why}.", ""]
    table = [{k: figures[k] for k in ONLINE_COLUMNS} for figures in online.values()]
    switches = {
        w: sum(e.get("kind", "switch") == "switch" for e in f["guard_events"])
        for w, f in online.items()
    }
    shifts = {w: sum(e["on"] for e in f.get("shift_events", ())) for w, f in online.items()}
    return [
        "## Online learning (gati-online vs static gati, same streams)",
        "",
        f"Updates every {config.online.update_every} requests ({config.online.steps} optax "
        f"steps per cache in the `trained` ones: steps that swap no cache in wait up to "
        f"{config.online.max_backoff}x longer), audit sample "
        f"{config.online.audit_fraction:g} of requests ({_sample_note(config.online)}), "
        f"calibration target {config.online.target}; counts are from the first round. "
        "Worst-window agreement is over windows of "
        f"{config.workload.window} requests.",
        "",
        markdown_table(table),
        "",
        "Accuracy-guard switches (first round): "
        + ", ".join(f"{w} {n}" for w, n in switches.items())
        + "; input-shift alarms "
        f"(shift_detect {bool(config.online.shift_detect)}): "
        + ", ".join(f"{w} {n}" for w, n in shifts.items())
        + ".",
        "",
        "Where gati-online's background time went (first round; ms in all, chunks run): a "
        "request arriving during a chunk waits for it.",
        "",
        markdown_table(_chunk_rows(online)),
        "",
        "Per stream over time (online_timeline.png: hit rate and mean exit stage of static "
        "gati and gati-online, scene cuts as grey lines, the learner's events as marks):",
        "",
        *_timeline_lines(online, workloads or {}),
        "",
    ]


def _miss_lines(check: dict[str, Any] | None) -> list[str]:
    """The chosen plan's all-miss overhead, predicted and measured, and the miss bound."""
    if not check:  # plans written before the miss check
        return []
    bound = (
        "no miss bound"
        if check["bound"] is None
        else f"miss bound {100 * check['bound']:.1f}% "
        f"{'held' if check['within_bound'] else 'NOT held'} after "
        f"{len(check['rounds'])} measured plan(s)"
    )
    comparators = "".join(
        f" {policy}: {100 * c['measured']:+.1f}% measured ({100 * c['predicted']:+.1f}% "
        f"predicted"
        + (
            ""
            if c.get("bound") is None
            else f"; bound {100 * c['bound']:.1f}% {'held' if c['within_bound'] else 'NOT held'}"
        )
        + ")."
        for policy, c in check.get("comparators", {}).items()
    )
    if comparators:
        comparators = (
            " The comparators' plans, each held to its own bound by measurement (apparate: its "
            "tail budget beyond the router's fixed charge):" + comparators
        )
    return [
        f"A request missing every lookup of the plan: predicted "
        f"{100 * check['predicted']:+.1f}%, measured {100 * check['measured']:+.1f}% over "
        f"the plain network ({bound}).{comparators}",
        "",
    ]


def _choice_lines(choice: dict[str, Any] | None) -> list[str]:
    """Which plan gati deploys when threshold plans were routed beside its own."""
    if not choice or not choice.get("candidates"):  # plans from before, or nothing to choose
        return []
    routed = ", ".join(
        f"{name} {tuple(c['positions']) or '(none)'} {c['measured_ms']:.3f} ms "
        f"({c['predicted_ms']:.3f} predicted)"
        for name, c in choice["candidates"].items()
    )
    chosen = choice["chosen"]
    deployed = (
        "its own plan"
        if chosen == "gati"
        else f"{chosen}'s plan, its predictors under the matching fixed selector (the same exits)"
    )
    return [
        f"Measured choice: threshold plans predicted within {100 * choice['margin']:.0f}% of "
        f"gati's routed the check requests beside it, mean latency: {routed}. gati deploys "
        f"{deployed}.",
        "",
    ]


def _legend_lines(config: ml_collections.ConfigDict, names: list[str]) -> list[str]:
    """What each policy row is, for the policies served (which Apparate, which thresholds)."""
    planner = config.planner
    what = {
        "none": "the plain network",
        "gati": "the planned learned caches",
        "gati-online": "the same caches learning from the stream (audited, guarded)",
        "confidence": "Shallow-Deep Networks' max-softmax threshold over the same predictors, "
        "planned by the same search",
        "entropy": "BranchyNet's entropy threshold, likewise",
        "apparate": f"Apparate: at most {planner.apparate_ramps} cheap ramps placed by utility "
        f"per tail cost within a {100 * planner.apparate_tail_budget:g}% tail budget, "
        "thresholds from its step search",
        "apparate-online": "those ramps re-tuned while serving (sliding-window re-tuning, "
        "ramp adjustment) with gati-online's audit budget",
        "knn": "a kNN cache of pooled activations",
        "knn-recent": "gati-online's recency memory alone, a traditional cache",
        "oracle": "exits wherever a deployed cache agrees with the base network (a bound)",
    }
    known = [n for n in names if n in what]
    if not known:
        return []
    return ["Rows: " + "; ".join(f"`{n}` {what[n]}" for n in known) + ".", ""]


def comparison_lines(
    against: dict[str, dict[str, Any]], controls: dict[str, dict[str, Any] | None] | None = None
) -> list[str]:
    """gati against each threshold policy, per workload: its speedup over it, the 90% paired
    interval and the verdict (benchmark.threshold_comparison); and the A/A control, where one
    was served (benchmark.control_figures)."""
    controls = controls or {}
    lines = []
    for workload in dict.fromkeys([*against, *controls]):
        parts = [
            f"{name} {f['speedup']:.3f}x ({f['low90']:.3f}-{f['high90']:.3f}, {f['verdict']})"
            for name, f in against.get(workload, {}).items()
        ]
        control = controls.get(workload)
        if control:
            text = (
                f"A/A control: {control['policy']} served twice, {control['speedup']:.3f}x "
                f"({control['low90']:.3f}-{control['high90']:.3f}, {control['verdict']})"
            )
            if control["verdict"] != "level":
                # Identical programs told apart: the interval misses part of this stream's
                # noise, so a verdict as small as their gap says nothing here.
                gap = abs(control["speedup"] - 1)
                text += f"; a verdict within {100 * gap:.1f}% of 1 is noise on this stream"
            parts.append(text)
        if parts:
            lines.append(f"{workload}: " + ", ".join(parts))
    if not lines:
        return []
    intro = []
    if any(against.values()):
        intro.append(
            "gati against each threshold policy at the same bound: gati's speedup over it (its "
            "mean latency over gati's), with a 90% interval pairing the same requests (block "
            "bootstrap); 'level' where the interval holds 1."
        )
    if any(controls.values()):
        intro.append(
            "The A/A control is one policy served as two copies, each through a router of its "
            "own, with the same interval: how far identical programs read apart in this "
            "serving, the noise a verdict must stand above."
        )
    return [" ".join(intro), "", *(f"- {line}" for line in lines), ""]


def _scaling_section(rows: list[dict[str, Any]]) -> list[str]:
    """Serving throughput against device count (batch-sharded router, closed loop)."""
    if not rows:
        return []
    return [
        "## Serving throughput vs devices",
        "",
        "The planned gati router with each request group split over the devices' data "
        "axis, closed loop (a full group always waiting); throughput is the median of "
        "three streams.",
        "",
        markdown_table(rows),
        "",
    ]


def _kernel_section(
    profile: dict[str, dict[str, float]] | None, rows: list[dict[str, Any]]
) -> list[str]:
    """Where each policy's batch-1 program spends its kernel time, every lookup missing."""
    if not profile:
        return []
    overhead = {r["policy"]: r.get("miss_overhead", float("nan")) for r in rows}
    summaries = kernel_profile_summaries(
        profile,
        {name: (None, overhead.get(name, float("nan"))) for name in profile if name != "plain"},
    )
    return [
        f"The same programs inside, every lookup missing ({KERNEL_PROFILE_NOTE}):",
        "",
        markdown_table(kernel_profile_rows(profile)),
        "",
        *[f"- {line}" for line in summaries],
        "",
    ]


def write_report(
    config: ml_collections.ConfigDict, workdir: Path, phases: dict[str, Any]
) -> dict[str, Any]:
    """Writes report.md, report.json and the report's plots from the phases' outputs."""
    exploration = _read(workdir / "exploration.json")
    plan = _read(workdir / "plan.json")
    bench = _read(workdir / "benchmark_details.json")
    rows = bench["rows"]
    # .get: benchmarks written before the miss_overhead column still make a report.
    columns = (
        "workload",
        "policy",
        "speedup_vs_none",
        "compute_speedup_vs_none",
        "miss_overhead",
        "agreement",
        "accuracy",
        "mean_latency_ms",
        "p99_latency_ms",
        "hit_rate",
        "cache_bytes",
    )
    main = [{k: r.get(k, float("nan")) for k in columns} for r in rows]
    plot_position_hit_rates(
        exploration["table"], plan["chosen"], workdir / "position_hit_rates.png"
    )
    windows = bench.get("windows", {})
    plot_hit_rate_over_time(windows, workdir / "hit_rate_over_time.png")
    online = bench.get("online", {})
    online_lines = _online_section(config, online, bench.get("workloads", {}))
    if online:
        plot_online_timeline(
            online,
            {w: s.get("scene_cuts", []) for w, s in bench.get("workloads", {}).items()},
            workdir / "online_timeline.png",
        )
    check = plan["cost_check"]
    small = plan["exhaustive_check"]
    lines = [
        "# gati_jax report",
        "",
        f"Base network `{config.caches.checkpoint}`, data `{config.data.name}`, accuracy "
        f"bound eps = {config.planner.eps}, memory budget "
        f"{config.planner.memory_budget_bytes} bytes, backend {bench['settings']['backend']}.",
        "",
        "## Serving benchmark (every policy at its planned setting)",
        "",
        f"Open-loop Poisson arrivals at {config.workload.rate} requests/s, "
        f"{config.workload.length} requests per workload, groups of at most "
        f"{config.serving.max_group}, {bench['settings']['rounds']} interleaved rounds; "
        "speedup is none's mean latency over the policy's, measured in the same run; "
        "miss_overhead is what a request that exits nowhere pays over the plain network "
        "(batch 1, its router timed beside the plain network).",
        "",
        markdown_table(main),
        "",
        *_legend_lines(config, list(dict.fromkeys(r["policy"] for r in rows))),
        *comparison_lines(bench.get("gati_vs_thresholds", {}), bench.get("control")),
        *_knn_recent_lines(bench.get("knn_recent", {})),
        *_compile_lines(bench.get("compile_s", {})),
        *[
            line
            for text in describe_kernels(bench.get("convolution_kernels"))
            for line in (f"Batch-1 programs as miss_overhead times them: {text}.", "")
        ],
        *_kernel_section(bench.get("kernel_profile_ms"), rows),
        *online_lines,
        *_scaling_section(bench.get("device_scaling", [])),
        "## Plan (tuned on validation, figures on test)",
        "",
        markdown_table(plan["table"]),
        "",
        f"Ours vs exhaustive search on positions {small['positions']} (grid "
        f"{small['grid']}): {small['ours_ms']:.4f} ms vs {small['exhaustive_ms']:.4f} ms.",
        "",
        f"Cost model: predicted {check['predicted_mean_ms']:.3f} ms, measured "
        f"{check['measured_mean_ms']:.3f} ms on {check['requests']} validation requests; "
        f"speedup predicted {check['predicted_speedup']:.2f}x, measured "
        f"{check['measured_speedup']:.2f}x (error in units of the plain network "
        f"{100 * check['normalized_error']:+.1f}%; with the plan's costs measured again "
        f"just before the check: predicted {check['remeasured_predicted_mean_ms']:.3f} ms, "
        f"error {100 * check['remeasured_normalized_error']:+.1f}%).",
        "",
        *_miss_lines(plan.get("miss_check")),
        *_choice_lines(plan.get("measured_choice")),
        "## Exploration (best candidate per position)",
        "",
        markdown_table(exploration["table"]),
        "",
        "## Workloads",
        "",
        markdown_table(
            [
                {
                    "workload": k,
                    **{
                        s: v
                        for s, v in w.items()
                        if s
                        in (
                            "p_same_as_previous",
                            "mean_window_entropy_bits",
                            "mean_classes_per_window",
                        )
                    },
                }
                for k, w in bench["workloads"].items()
            ]
        ),
        "",
        "## Phases",
        "",
        markdown_table([{"phase": k, "seconds": v["seconds"]} for k, v in phases.items()]),
        "",
        "Plots: position_hit_rates.png, agreement_vs_speedup.png, latency_cdf.png, "
        "hit_rate_over_time.png, agreement_over_time.png and online_timeline.png (online "
        "runs), plan_tradeoff.png, "
        "exploration.png.",
        "",
    ]
    (workdir / "report.md").write_text("\n".join(lines))
    report = {
        "benchmark": rows,
        "plan": plan,
        "exploration_table": exploration["table"],
        "workloads": bench["workloads"],
        "online": online,
        "device_scaling": bench.get("device_scaling", []),
        "phases": phases,
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    logging.info(format_table(main))
    logging.info(f"wrote {workdir / 'report.md'} and {workdir / 'report.json'}")
    return report
