"""The main job end to end on the shipped synthetic MLP (configs/smoke.py): exploration,
planning, the policy benchmark, the report, resuming, and loading the trained system."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from gati_jax.jobs import main_job
from gati_jax.jobs.main_job import affected_phase, run_main_job
from gati_jax.planner.plan import load_plan, plan_deployment
from gati_jax.runtime.router import bucket_sizes
from gati_jax.runtime.segments import segment_count
from gati_jax.system import load_system
from gati_jax.training.checkpointing import load_base_model

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "workload",
    "policy",
    "accuracy",
    "agreement",
    "mean_latency_ms",
    "p50_latency_ms",
    "p99_latency_ms",
    "throughput_rps",
    "speedup_vs_none",
    "mean_compute_ms",
    "compute_speedup_vs_none",
    "oracle_fraction",
    "hit_rate",
    "cache_bytes",
    "miss_overhead",
    "feasible",
}


def smoke_config():
    """configs/smoke.py, shortened further for the test."""
    spec = importlib.util.spec_from_file_location("smoke", ROOT / "configs/smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.caches.checkpoint = str(ROOT / "checkpoints/synthetic_mlp")
    config.workload.length = 120
    config.benchmark.rounds = 2
    config.planner.check_requests = 50
    config.planner.memory_budget_bytes = 6000
    # Loose enough that the small tuning set admits caches: the online rows need a gati plan.
    config.planner.eps = 0.05
    config.planner.confidence = 0.0
    return config


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    config = smoke_config()
    log = run_main_job(config, str(workdir))
    return config, workdir, log


def test_plan_respects_bound_and_budget_and_loads(explored):
    config, workdir, _ = explored
    result = json.loads((workdir / "plan.json").read_text())
    assert (workdir / "plan_tradeoff.png").stat().st_size > 0
    for row in result["table"]:
        if row["feasible"]:
            assert row["agreement"] >= 1 - config.planner.eps - 1e-12
            assert row["memory_kb"] * 1024 <= 6000
    ours = [r for r in result["table"] if r["policy"] == "gati" and r["method"] == "ours"][0]
    for row in result["table"]:
        if row["policy"] == "gati" and row["feasible"]:
            assert ours["pred_ms"] <= row["pred_ms"] + 1e-9, row["method"]
    assert result["exhaustive_check"]["ours/exhaustive"] <= 1.02
    # The cost model is checked twice: with the planning profile and re-measured just before.
    check = result["cost_check"]
    for prefix in ("", "remeasured_"):
        assert np.isfinite(check[f"{prefix}normalized_error"])
    assert check["remeasured_predicted_speedup"] == pytest.approx(
        check["remeasured_plain_ms"] / check["remeasured_predicted_mean_ms"]
    )
    assert check["remeasured_within_10pct"] == (abs(check["remeasured_normalized_error"]) <= 0.1)
    # Per exit position: fractions add up, and the rows average back to the whole.
    rows = check["by_exit"]
    assert sum(r["fraction"] for r in rows) == pytest.approx(1.0)
    assert sum(r["fraction"] * r["measured"] for r in rows) == pytest.approx(
        check["measured_mean_ms"] / check["plain_measured_ms"]
    )
    assert sum(r["fraction"] * r["predicted"] for r in rows) == pytest.approx(
        check["predicted_mean_ms"] / check["plain_profiled_ms"]
    )
    plan, bank = load_plan(workdir / "plan")
    # No miss bound: the chosen plan's all-miss request measured once, as planned.
    misses = result["miss_check"]
    assert misses["bound"] is None and misses["within_bound"]
    assert [r["positions"] for r in misses["rounds"]] == [list(plan.positions)]
    assert misses["predicted"] == pytest.approx(result["chosen"]["tuning"]["miss_overhead"])
    assert np.isfinite(misses["measured"]) and (misses["measured"] == 0) == (not plan.positions)
    deployment = plan_deployment(plan, bank)
    assert deployment.positions == plan.positions
    model = load_base_model(config.caches.checkpoint)
    router = deployment.router(model, 4)
    images = np.zeros((3, *model.network.input_shape), np.uint8)
    assert len(router.route(deployment.params, deployment.thresholds, images).answer) == 3


def test_benchmark_rows_are_consistent(explored):
    config, workdir, _ = explored
    saved = json.loads((workdir / "benchmark.json").read_text())
    gati = [
        m
        for m in json.loads((workdir / "plan.json").read_text())["methods"]
        if (m["policy"], m["method"]) == ("gati", "joint")
    ][0]
    # online.enabled by default; gati-online serves when the gati plan deploys a cache.
    online_served = bool(gati["positions"])
    policies = {*config.benchmark.policies, *(["gati-online"] if online_served else [])}
    assert len(saved) == len(config.benchmark.workloads) * len(policies)
    for name in ("latency_cdf.png", "agreement_vs_speedup.png"):
        assert (workdir / name).stat().st_size > 0
    details = json.loads((workdir / "benchmark_details.json").read_text())
    # The config the benchmark served under is saved with its results.
    assert details["config"]["caches"]["checkpoint"] == config.caches.checkpoint
    assert details["config"]["benchmark"]["rounds"] == config.benchmark.rounds
    # Where the benchmark's time went, step by step, within its whole.
    steps = details["step_seconds"]
    assert list(steps) == [
        "setup",
        "miss_overheads",
        "kernel_profile",
        *(f"serve {w}" for w in config.benchmark.workloads),
        "device_scaling",
    ]
    assert all(t >= 0 for t in steps.values())
    assert sum(steps.values()) <= details["seconds"] + 0.5
    compiling = details["step_compile_seconds"]
    assert list(compiling) == list(steps) and compiling["serve uniform"] > 0
    assert all(0 <= compiling[s] <= steps[s] + 0.1 for s in steps)
    # Every served policy's compile time, every bucket, is reported.
    assert set(details["compile_s"]) == {r["policy"] for r in saved}
    assert all(0.0 < t < 600.0 for t in details["compile_s"].values())
    assert "Compile time of each policy's programs" in (workdir / "report.md").read_text()
    # How XLA compiled the convolutions of each timed program (the MLP has none): the plain
    # network and every policy that deploys a cache.
    if jax.default_backend() == "cpu":
        # A policy that deploys nothing has no program of its own and no miss overhead.
        deploying = {r["policy"] for r in saved if r["miss_overhead"] != 0.0}
        assert set(details["convolution_kernels"]) == {"plain"} | deploying
        assert all(
            k == {"library_fusions": 0, "library": 0, "total": 0}
            for k in details["convolution_kernels"].values()
        )
        # The same programs' kernel times in parts: each program's own lookups.
        profile = details["kernel_profile_ms"]
        assert set(profile) == {"plain"} | deploying
        assert not any(k.startswith("lookup at ") for k in profile["plain"])
        for name in deploying:
            assert any(k.startswith("lookup at ") and v > 0 for k, v in profile[name].items())
    for workload in config.benchmark.workloads:
        mine = {r["policy"]: r for r in saved if r["workload"] == workload}
        assert set(mine) == policies  # the A/A control's copy is in no table
        # The control: confidence against its own copy, served beside every policy.
        control = details["control"][workload]
        assert control["policy"] == config.benchmark.control == "confidence"
        assert control["low90"] <= control["speedup"] <= control["high90"]
        assert control["verdict"] in ("ahead", "level", "behind")
        if online_served:
            online = details["online"][workload]
            assert online["speedup_vs_static_gati"] == pytest.approx(
                mine["gati"]["mean_latency_ms"] / mine["gati-online"]["mean_latency_ms"]
            )
            # One program per bucket for the tapped router (and the untapped one, unless
            # online.single_program), one per audit segment and audit group size; all
            # compiled in the warm-up, never again.
            group = int(config.serving.max_group)
            stages = load_base_model(config.caches.checkpoint).network.num_stages
            routers = 1 if config.online.single_program else 2
            assert online["trace_count"] == (
                routers * len(bucket_sizes(group))
                + segment_count(stages, config.online.audit_segments)
                * min(config.online.audit_group, group)
            )
        none = mine["none"]
        assert none["agreement"] == 1.0 and none["hit_rate"] == 0.0
        assert none["speedup_vs_none"] == pytest.approx(1.0)
        # The worst case's price: nothing for none or a plan of nothing; one measurement
        # per router, the same on every workload.
        assert none["miss_overhead"] == 0.0
        for name, row in mine.items():
            assert np.isfinite(row["miss_overhead"]), name
            first = [r for r in saved if r["policy"] == name][0]
            assert row["miss_overhead"] == first["miss_overhead"], name
        for row in mine.values():
            assert set(row) == ROW_KEYS
            assert row["speedup_vs_none"] == pytest.approx(
                none["mean_latency_ms"] / row["mean_latency_ms"]
            )
            # Compute excludes queueing: a request's mean compute never exceeds its latency.
            assert 0 < row["mean_compute_ms"] <= row["mean_latency_ms"] + 1e-9
            assert row["compute_speedup_vs_none"] == pytest.approx(
                none["mean_compute_ms"] / row["mean_compute_ms"]
            )
            assert 0 <= row["agreement"] <= 1 and 0 <= row["hit_rate"] <= 1
            assert row["p50_latency_ms"] <= row["p99_latency_ms"]
            # The oracle exits only where its cache agrees: nothing beats it on agreement.
            assert mine["oracle"]["agreement"] >= row["agreement"]
        assert mine["oracle"]["agreement"] == 1.0


def test_report_resume_and_loaded_system(explored, monkeypatch):
    config, workdir, log = explored
    report = json.loads((workdir / "report.json").read_text())
    text = (workdir / "report.md").read_text()
    assert "| workload | policy | speedup_vs_none | compute_speedup_vs_none |" in text
    # Which Apparate (and which threshold) each row is, for the policies served.
    served = {r["policy"] for r in report["benchmark"]}
    assert "Rows: `none` the plain network; `gati` the planned learned caches" in text
    assert ("`apparate` Apparate: at most" in text) == ("apparate" in served)
    # The A/A control's line, for every workload.
    assert text.count("A/A control: confidence served twice, ") == len(config.benchmark.workloads)
    misses = report["plan"]["miss_check"]
    assert (
        f"A request missing every lookup of the plan: predicted "
        f"{100 * misses['predicted']:+.1f}%, measured {100 * misses['measured']:+.1f}% "
        "over the plain network (no miss bound)"
    ) in text
    assert report["benchmark"] == json.loads((workdir / "benchmark.json").read_text())
    if jax.default_backend() == "cpu":
        assert "The same programs inside, every lookup missing" in text
        assert "| part | plain | " in text
        profile = json.loads((workdir / "benchmark_details.json").read_text())["kernel_profile_ms"]
        for name in set(profile) - {"plain"}:
            assert f"\n- {name}: its lookups' kernels " in text
    for name in ("position_hit_rates.png", "hit_rate_over_time.png"):
        assert (workdir / name).stat().st_size > 0
    if report["online"]:
        assert "## Online learning" in text
        for name in ("agreement_over_time.png", "online_hit_rate_over_time.png"):
            assert (workdir / name).stat().st_size > 0
    else:
        assert "no gati-online rows" in text
    # Running again skips every finished phase (only the report is rewritten).
    again = run_main_job(config, str(workdir))
    for phase in ("explore", "plan", "benchmark"):
        assert again[phase] == log[phase]
    with pytest.raises(ValueError, match="unknown phases"):
        run_main_job(config, str(workdir), redo=["explroe"])
    # A redo cut off before its last phase leaves no later phase recorded as finished: the
    # old benchmark, made from the old plan, is run again on resume, not skipped.
    copy = workdir.parent / "redo_cut_off"
    shutil.copytree(workdir, copy)

    def cut_off(*args, **kwargs):
        raise RuntimeError("cut off")

    with monkeypatch.context() as patch:
        patch.setattr(main_job, "run_planning", cut_off)
        with pytest.raises(RuntimeError, match="cut off"):
            run_main_job(config, str(copy), redo=["plan"])
    kept = json.loads((copy / "phases.json").read_text())
    assert kept["explore"] == log["explore"] and "plan" not in kept and "benchmark" not in kept
    shutil.rmtree(copy)
    # Settings of the network server and of the devices change no phase's results.
    served = config.copy_and_resolve_references()
    served.server.port, served.server.idle_poll_ms = 9999, 0.0
    assert affected_phase("server.idle_poll_ms", True) is None
    again = run_main_job(served, str(workdir))
    for phase in ("explore", "plan", "benchmark"):
        assert again[phase] == log[phase]
    # Another program serves with one call; it answers like the plan's own deployment.
    system = load_system(workdir, max_group=4)
    plan, bank = load_plan(workdir / "plan")
    assert system.plan == plan
    images = np.random.default_rng(0).integers(
        0, 256, (4, *system.model.network.input_shape), dtype=np.uint8
    )
    result = system.route(images)
    deployment = plan_deployment(plan, bank)
    want = deployment.router(system.model, 4).route(
        deployment.params, deployment.thresholds, images
    )
    np.testing.assert_array_equal(result.answer, want.answer)


def _cheap_lookups_profile(real_profile):
    """A profile stand-in: this MLP's stages cost less than a lookup (no plan deploys a cache);
    one where later stages are dear and lookups cheap makes the planner want one."""

    def profile(*args, **kwargs):
        prof = real_profile(*args, **kwargs)
        prof.prefix_s = list(np.linspace(1e-4, 1e-3, len(prof.prefix_s)))
        prof.lookup_s = {k: 1e-6 for k in prof.lookup_s}
        prof.exit_s = {k: 1e-6 for k in prof.exit_s}
        prof.router_s, prof.deploy_s = {}, {}
        return prof

    return profile


def test_a_miss_bound_is_held_by_planning_again_and_else_nothing_deploys(
    explored, tmp_path, monkeypatch
):
    """The planning job under a bound, on a stand-in machine where every lookup costs half
    the plain network: the plan without the bound (the scout) measures over a 30% bound, its
    lookups are timed alone and charged that, and the first plan deploys nothing; with no
    rounds to plan again, the plan breaks the bound and the fallback deploys nothing."""
    from gati_jax.jobs import planning

    _, workdir, _ = explored
    profile = _cheap_lookups_profile(planning.load_or_measure)
    calls = []  # per call, (policy, positions) of each deployment timed

    def machine(model, deployments, group_size, rounds):
        calls.append([(d.policy, tuple(d.positions)) for d in deployments])
        return [0.5 * len(d.positions) for d in deployments]

    monkeypatch.setattr(planning, "load_or_measure", profile)
    monkeypatch.setattr(planning, "measure_miss_overheads", machine)
    for rounds, out in ((3, tmp_path / "replanned"), (0, tmp_path / "fallback")):
        calls.clear()
        config = smoke_config()
        config.planner.confirm_rounds = 0  # keep the stand-in profile's costs
        config.planner.max_miss_overhead = 0.3
        config.planner.miss_rounds = rounds
        result = planning.run_planning(config, str(out), str(workdir / "cache_bank"))
        steps = result["step_seconds"]
        assert list(steps)[:4] == ["inputs", "search", "confirm", "miss_bound"]
        assert 0 < sum(steps.values()) <= result["seconds"] + 0.1 * len(steps)
        # The part of each step spent compiling: the profile's routers, at least.
        compiling = result["step_compile_seconds"]
        assert list(compiling) == list(steps) and compiling["inputs"] > 0
        assert all(0 <= compiling[s] <= steps[s] + 0.1 for s in steps)
        check = result["miss_check"]
        first = check["rounds"][0]["positions"]
        assert first, "the first plan deploys a cache: the bound has something to act on"
        assert check["bound"] == pytest.approx(0.3) and check["within_bound"]
        assert [r["positions"] for r in check["rounds"]] == [first, []]
        assert [r["measured"] for r in check["rounds"]] == [0.5 * len(first), 0.0]
        assert result["chosen"]["positions"] == [] and load_plan(out / "plan")[0].positions == ()
        assert check["rounds"][0]["floors_us"] == [0.0] * len(first)
        keys = check["rounds"][0]["keys"]
        assert [int(k.split("/")[0][1:]) for k in keys] == first
        # With rounds to plan again, the first is the scout (the plan without the bound,
        # its lookups timed alone, each once); with none, the plan stands or falls alone.
        # The scout also times each position's smallest cache alone.
        assert check["rounds"][0]["scout"] == (rounds > 0)
        alone = check["rounds"][0]["alone"]
        assert set(alone) >= set(keys) if rounds else not alone
        assert set(alone.values()) <= {0.5}
        # Then the comparators' plans, timed in one batch and each held to its bound as
        # ours is: every lookup costs more than the bound here, so each ends with nothing.
        comparators = check["comparators"]
        assert set(comparators) == {"confidence", "entropy", "apparate"}
        batch = next(c for c in calls if c and c[0][0] != "gati")
        assert [policy for policy, _ in batch] == list(comparators)
        for (_, positions), c in zip(batch, comparators.values()):
            assert c["rounds"][0]["positions"] == list(positions)
            assert c["rounds"][0]["measured"] == 0.5 * len(positions)
            assert c["bound"] <= 0.3 + 1e-12 and c["within_bound"]
            assert c["positions"] == [] and c["measured"] == 0.0
        measured = [positions for call in calls for policy, positions in call if policy == "gati"]
        singles = measured[1:-1]
        assert measured[0] == tuple(first) and measured[-1] == ()
        assert len(singles) == len(alone) and all(len(m) == 1 for m in singles)
        assert {m[0] for m in singles} >= (set(first) if rounds else set())


def test_apparate_holds_its_tail_budget_by_measurement_without_a_miss_bound(
    explored, tmp_path, monkeypatch
):
    """With no miss bound, apparate's tail budget still holds on the machine: the stand-in
    profile says its ramps are nearly free, the machine times each at half the plain network;
    every candidate ramp is timed alone, the floors rise, and it is planned again (nothing
    fits: it deploys no ramp). Confidence and entropy, unbounded, are timed once."""
    from gati_jax.jobs import planning

    _, workdir, _ = explored
    calls = []

    def machine(model, deployments, group_size, rounds):
        calls.append([(d.policy, tuple(d.positions)) for d in deployments])
        return [0.5 * len(d.positions) for d in deployments]

    profile = _cheap_lookups_profile(planning.load_or_measure)
    monkeypatch.setattr(planning, "load_or_measure", profile)
    monkeypatch.setattr(planning, "measure_miss_overheads", machine)
    config = smoke_config()
    config.planner.confirm_rounds = 0
    config.planner.max_miss_overhead = -1.0
    config.planner.miss_rounds = 2
    result = planning.run_planning(config, str(tmp_path / "plan"), str(workdir / "cache_bank"))
    comparators = result["miss_check"]["comparators"]
    for policy in ("confidence", "entropy"):
        assert comparators[policy]["bound"] is None and comparators[policy]["within_bound"]
        assert len(comparators[policy]["rounds"]) == 1
    held = comparators["apparate"]
    first = held["rounds"][0]
    assert first["positions"], "the profile's apparate deploys a ramp"
    assert first["measured"] == 0.5 * len(first["positions"]) > held["bound"]
    assert held["bound"] == pytest.approx(config.planner.apparate_tail_budget, abs=1e-3)
    # Every ramp it could place was timed alone with the plan's own (one batch, each alone).
    alone = [c for c in calls if c and c[0][0] == "apparate" and all(len(p) == 1 for _, p in c)]
    timed = {positions[0] for call in alone for _, positions in call}
    assert set(first["positions"]) <= timed and len(alone) == 1
    assert set(first["alone"].values()) == {0.5}
    assert held["within_bound"] and held["positions"] == [] and held["measured"] == 0.0
    apparate_plan = next(m for m in result["methods"] if m["policy"] == "apparate")
    assert apparate_plan["positions"] == []


def test_gati_deploys_a_threshold_plan_that_routes_faster(explored, tmp_path, monkeypatch):
    """The measured choice: every threshold plan over the same predictors within the margin
    routes the check requests beside ours; on a stand-in machine where a threshold plan is the
    fastest, gati deploys it (its predictors under that policy's selector kind: the same
    exits and certificate); where ours is the fastest, ours stays."""
    from gati_jax.jobs import planning

    _, workdir, _ = explored
    profile = _cheap_lookups_profile(planning.load_or_measure)
    monkeypatch.setattr(planning, "load_or_measure", profile)
    # Every all-miss request within its bound: the machine's noise decides nothing here.
    monkeypatch.setattr(
        planning,
        "measure_miss_overheads",
        lambda model, deployments, *a, **k: [0.0] * len(deployments),
    )
    for ours_fastest in (False, True):
        routed = []

        def machine(programs, requests, repeats=3, chunk=50, ours_fastest=ours_fastest):
            # A threshold plan (the last routed) or ours (the first) is the fastest.
            fastest = list(programs)[0 if ours_fastest else -1]
            routed.append(list(programs))
            return {
                name: np.full(len(requests), 1e-3 if name == fastest else 2e-3) for name in programs
            }

        monkeypatch.setattr(planning, "route_times", machine)
        config = smoke_config()
        config.planner.confirm_rounds = 0
        config.planner.choice_margin = 10.0  # every feasible threshold plan is a candidate
        out = tmp_path / str(ours_fastest)
        result = planning.run_planning(config, str(out), str(workdir / "cache_bank"))
        choice = result["measured_choice"]
        assert len(routed) == 1, "the smoke's threshold plans are candidates"
        assert routed[0][0] == "gati" and routed[0] == list(choice["candidates"])
        assert len(routed[0]) >= 2 and set(routed[0][1:]) <= {"confidence", "entropy", "apparate"}
        fastest = routed[0][0 if ours_fastest else -1]
        assert choice["chosen"] == fastest
        chosen = result["chosen"]
        assert chosen["policy"] == "gati" and result["methods"][0] == chosen
        assert chosen["positions"] == choice["candidates"][fastest]["positions"]
        assert chosen["candidates"] == choice["candidates"][fastest]["candidates"]
        assert load_plan(out / "plan")[0].positions == tuple(chosen["positions"])
        if ours_fastest:
            assert "measured_choice" not in chosen["settings"]
            continue
        # The threshold plan's exits under gati's fixed selector: its agreement and certificate.
        source = next(m for m in result["methods"] if m["policy"] == fastest)
        assert chosen["settings"]["measured_choice"] == fastest
        assert chosen["tuning"] == source["tuning"]  # its figures, as its policy predicts them
        assert chosen["test"]["agreement"] == source["test"]["agreement"]
        assert chosen["settings"]["certificate"] == source["settings"]["certificate"]
        assert chosen["positions"] == source["positions"]
        # The cost check predicts it by the threshold policy's instance: the deployed gati
        # router exits where that instance says.
        assert result["cost_check"]["same_exit_fraction"] >= 0.98


def test_report_says_which_plan_gati_deploys():
    """The report names the routed candidates and the plan gati deploys; plans from before
    the measured choice, or with nothing to choose, add no line."""
    from gati_jax.jobs.report import _choice_lines

    choice = {
        "margin": 0.15,
        "chosen": "confidence",
        "candidates": {
            "gati": {"positions": [3, 10], "predicted_ms": 1.1, "measured_ms": 1.569},
            "confidence": {"positions": [3, 14], "predicted_ms": 1.2, "measured_ms": 1.507},
        },
    }
    line = _choice_lines(choice)[0]
    assert "within 15%" in line and "confidence (3, 14) 1.507 ms (1.200 predicted)" in line
    assert "gati deploys confidence's plan" in line
    assert "its own plan" in _choice_lines(choice | {"chosen": "gati"})[0]
    assert _choice_lines(None) == [] and _choice_lines(choice | {"candidates": {}}) == []


def test_planning_times_a_few_positions_of_each_program_and_prices_the_rest(explored, tmp_path):
    """Planning with one timed position per lookup program: the profile prices the other
    lookups at their program's timing, every plan (the exhaustive comparator's too, on a
    subset of positions) is priced, and what the chosen plan deploys is timed."""
    from gati_jax.jobs import planning
    from gati_jax.planner.costs import Profile, _read_profiles, lookup_kind

    _, workdir, _ = explored
    config = smoke_config()
    config.planner.timings_per_program = 1
    config.planner.exhaustive_positions = 1  # a subset: its program may be timed elsewhere
    out = tmp_path / "one_timing"
    result = planning.run_planning(config, str(out), str(workdir / "cache_bank"))
    (stored,) = _read_profiles(out / "profile.json").values()
    profile = Profile(**stored)
    by_program: dict[str, list[str]] = {}
    for key, program in profile.programs.items():
        by_program.setdefault(program, []).append(key)
    assert any(len(keys) > 1 for keys in by_program.values())
    untimed = [k for k in profile.programs if k not in profile.lookup_s]
    assert untimed, "some lookups are priced at their program's timing, not timed"
    assert all(any(k in profile.lookup_s for k in keys) for keys in by_program.values())
    # Whatever the plan deploys was timed at its own position (confirmed after the choice).
    chosen = result["chosen"]
    kind = lookup_kind(chosen["policy"])
    assert {f"{kind}/{c}" for c in chosen["candidates"]} <= set(profile.lookup_s)
    assert set(profile.confirmed) <= set(profile.lookup_s)
    assert result["exhaustive_check"]["exhaustive_ms"] > 0
