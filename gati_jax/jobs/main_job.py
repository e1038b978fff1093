"""``train_caches.py``'s job, end to end and resumable: base network, exploration, plan,
benchmark, report.

A work directory holds one run. Each phase writes its outputs into it and is recorded in
``phases.json`` when it finishes, with the hashes of its outputs; running again skips
finished phases unless they are named in ``redo``, and a phase runs again (with every phase
after it, which depend on it) when it is redone or its outputs were deleted or changed.
Running again under a config that differs in a key that affects a finished phase's results
is refused, naming the keys and the ``redo`` that makes them take effect; so is a base
network at ``caches.checkpoint`` other than the one the finished phases were made for.

The base network is trained only when asked: ``train_base`` (``--train_base``) trains one
into ``caches.checkpoint`` in this work directory's run (replacing a base network there, if
gati_jax wrote it), and ``caches.train_base`` trains one there when it holds none. A missing
base network is otherwise an error, never a reason to train one and replace a folder.

The benchmark phase serves ``gati-online`` (online learning) beside the static policies when
``online.enabled``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from gati_jax import data, sharding
from gati_jax.atomic_dir import check_replaceable
from gati_jax.config import ConfigError, validate_config
from gati_jax.config_checks import flat_config
from gati_jax.integrity import MANIFEST, file_sha256
from gati_jax.jobs.benchmark import run_benchmark
from gati_jax.jobs.exploration import run_exploration
from gati_jax.jobs.planning import check_bound_reachable, run_planning
from gati_jax.jobs.report import write_report
from gati_jax.jobs.train_base import train_and_evaluate
from gati_jax.training.checkpointing import CheckpointError, base_model_fingerprint

PHASES = ("base", "explore", "plan", "benchmark", "report")
# What each phase writes into the work directory that later phases read (artefact
# directories by their manifests, which vouch for every file in them).
PHASE_OUTPUTS = {
    "explore": ("exploration.json", f"cache_bank/{MANIFEST}"),
    "plan": ("plan.json", f"plan/{MANIFEST}"),
    "benchmark": ("benchmark.json", "benchmark_details.json"),
}
# Config entries that are paths: stored absolute, so the work directory loads from anywhere.
_PATH_KEYS = (
    ("caches", "checkpoint"),
    ("planner", "profile"),
    ("train", "export_dir"),
    ("data", "data_dir"),
)


def _phase_log(workdir: Path) -> dict[str, Any]:
    path = workdir / "phases.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is corrupt ({error}); delete it to run every phase again"
        ) from None


def _absolute_paths(stored: dict[str, Any]) -> dict[str, Any]:
    for section, key in _PATH_KEYS:
        value = stored.get(section, {}).get(key)
        if isinstance(value, str) and value:
            stored[section][key] = str(Path(value).absolute())
    return stored


def stored_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as WORKDIR/config.json records it: plain JSON, paths made absolute."""
    return _absolute_paths(json.loads(config.to_json_best_effort()))


def affected_phase(key: str, base_trained: bool) -> str | None:
    """The first phase whose results config ``key`` affects (later phases depend on it), or
    None for keys that change how a phase runs, never what it produces."""
    section = key.split(".")[0]
    if section in ("mesh", "server") or key in ("data.data_dir", "caches.train_base"):
        # Devices give the same answers; the network server runs after the job; where data
        # is found; whether to train.
        return None
    if section in ("data", "augment", "model", "train"):
        # Only a base network trained here reads them (the caches read the checkpoint's).
        return "base" if base_trained else None
    if key == "seed":
        return "base" if base_trained else "explore"
    if section == "caches":
        return "explore"
    if section == "planner" or key.startswith("policy.knn_"):
        return "plan"
    if section in ("policy", "workload", "serving", "online", "benchmark"):
        return "benchmark"
    return "explore"  # a key this list does not know: assume it matters


def _short(value: Any) -> str:
    text = "absent" if value is None else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_same_run(
    workdir: Path, log: dict[str, Any], current: dict[str, Any], redo_from: int, base_trained: bool
) -> None:
    """Refuses to continue a finished run under a config whose changes affect a finished
    phase that is not being redone (``redo_from``: index of the first phase redone)."""
    finished = [p for p in PHASES[:-1] if p in log]
    if not finished:
        return
    path = workdir / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{workdir} holds finished phases {finished} but no config.json, so this config "
            "cannot be checked against theirs; rerun with --redo=explore (redo=['explore']) "
            "to make them again, or use another --workdir"
        )
    try:
        # (relative paths: config.json files written before paths were stored absolute)
        saved = flat_config(_absolute_paths(json.loads(path.read_text())))
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path} is corrupt ({error}); rerun with --redo=explore to make "
            "every phase again, or use another --workdir"
        ) from None
    new = flat_config(current)
    changed: dict[str, str] = {}
    for key in sorted(saved.keys() | new.keys()):
        if saved.get(key) == new.get(key):
            continue
        phase = affected_phase(key, base_trained)
        if phase is not None and phase in finished and PHASES.index(phase) < redo_from:
            changed[key] = phase
    if changed:
        first = min(changed.values(), key=PHASES.index)
        keys = ", ".join(f"{k} ({_short(saved.get(k))} -> {_short(new.get(k))})" for k in changed)
        raise ConfigError(
            f"{workdir} holds a finished run made with another config: changed {keys}, which "
            f"affect the finished phase(s) {sorted(set(changed.values()), key=PHASES.index)}. "
            f"Rerun with --redo={first} (redo=['{first}']) to redo {first} and every phase "
            "after it under the new config, or use another --workdir"
        )


def _output_hashes(workdir: Path, phase: str) -> dict[str, str]:
    return {
        name: file_sha256(workdir / name)
        for name in PHASE_OUTPUTS.get(phase, ())
        if (workdir / name).is_file()
    }


def _stale_outputs(workdir: Path, phase: str, entry: dict[str, Any]) -> str | None:
    """Why a finished phase's outputs cannot be used (deleted, changed), or None."""
    recorded = entry.get("outputs", {})
    for name in PHASE_OUTPUTS.get(phase, ()):
        path = workdir / name
        if not path.is_file():
            return f"{path} is missing"
        if name in recorded and file_sha256(path) != recorded[name]:
            return f"{path} changed after the phase wrote it"
    return None


def first_phase_to_run(
    workdir: Path, log: dict[str, Any], redo: Sequence[str], run_base: bool
) -> tuple[int, str]:
    """The index of the first phase to run and why: it and every phase after it run (later
    phases read earlier ones' outputs); the report always runs."""
    for index, phase in enumerate(PHASES[:-1]):
        if phase in redo:
            return index, "asked for"
        if phase == "base":
            if run_base:
                return index, "training the base network"
        elif phase not in log:
            return index, "not finished"
        else:
            stale = _stale_outputs(workdir, phase, log[phase])
            if stale:
                return index, stale
    return len(PHASES) - 1, "always"


def _has_model(checkpoint: Path) -> bool:
    return (checkpoint / "model.json").is_file() or (checkpoint / MANIFEST).is_file()


def run_main_job(
    config: ml_collections.ConfigDict,
    workdir: str,
    redo: Sequence[str] = (),
    train_base: bool = False,
) -> dict[str, Any]:
    """Runs every unfinished phase and returns the phase log (seconds per phase).

    ``redo`` names phases to run again, each with every phase after it; ``train_base``
    trains the base network into ``caches.checkpoint`` in this run (``caches.train_base``:
    only when it holds none).
    """
    validate_config(config)
    sharding.initialize(config.mesh)  # several hosts: join before any device is touched
    unknown = sorted(set(redo) - set(PHASES))
    if unknown:
        raise ValueError(f"unknown phases to redo {unknown}; phases: {list(PHASES)}")
    out = Path(workdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    log = _phase_log(out)
    checkpoint = Path(config.caches.checkpoint).absolute()
    train_if_missing = bool(config.caches.get("train_base", False))
    trained_here = bool(log.get("base", {}).get("trained", False))
    run_base = (
        "base" in redo
        or (train_base and not trained_here)
        or ((train_base or train_if_missing) and not _has_model(checkpoint))
    )
    if run_base:
        check_replaceable(checkpoint)  # before anything is written or trained
    elif not _has_model(checkpoint):
        raise CheckpointError(
            f"no base model at {checkpoint} (missing model.json): point caches.checkpoint at "
            "one (e.g. checkpoints/fashion_mnist_resnet18), or ask for one to be trained "
            "there with --train_base or caches.train_base=True"
        )

    start, reason = first_phase_to_run(out, log, redo, run_base)
    current = stored_config(config)
    check_same_run(out, log, current, start, trained_here or run_base)
    if not run_base and PHASES.index("explore") < start:
        made_for = log.get("explore", {}).get("model_fingerprint")
        now = base_model_fingerprint(checkpoint)
        if made_for and made_for != now:
            raise CheckpointError(
                f"the finished phases in {out} were made for the base network {made_for}, but "
                f"{checkpoint} now holds the base network {now}; rerun with --redo=explore "
                "(redo=['explore']) to make them again for it, or restore the original"
            )
    if start <= PHASES.index("plan"):
        # Before minutes of exploration: can the tuning set certify the bound at all?
        validation = data.load_dataset(config.data).validation
        check_bound_reachable(config.planner, len(validation.labels))
    # The config a later load_system(workdir) reads the base checkpoint from.
    (out / "config.json").write_text(json.dumps(current, indent=1) + "\n")
    # The phases about to run are no longer finished: a run cut off among them must not
    # leave a later phase's old record (and its outputs, made from the old plan) to be
    # skipped on the next resume.
    redone = [phase for phase in PHASES[start:] if phase in log]
    if redone:
        for phase in redone:
            del log[phase]
        (out / "phases.json").write_text(json.dumps(log, indent=1) + "\n")

    def base() -> None:
        if not run_base:
            return
        config.train.export_dir = str(checkpoint)
        train_and_evaluate(config, str(out / "base_training"))

    steps: dict[str, Callable[[], Any]] = {
        "base": base,
        "explore": lambda: run_exploration(config, str(out)),
        "plan": lambda: run_planning(config, str(out)),
        "benchmark": lambda: run_benchmark(config, str(out)),
        "report": lambda: write_report(config, out, log),
    }
    if PHASES[start] in log and reason not in ("asked for", "always"):
        logging.warning("running %s and every phase after it again: %s", PHASES[start], reason)
    for index, phase in enumerate(PHASES):
        if index < start:
            if phase in log:
                logging.info(
                    "== %s: finished earlier (%s), skipped", phase, log[phase].get("finished", "?")
                )
            continue
        logging.info("== %s", phase)
        started = time.time()
        steps[phase]()
        entry: dict[str, Any] = {
            "seconds": round(time.time() - started, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "outputs": _output_hashes(out, phase),
        }
        if phase == "base":
            entry["trained"] = run_base or trained_here
        if phase == "explore":
            entry["model_fingerprint"] = base_model_fingerprint(checkpoint)
        log[phase] = entry
        (out / "phases.json").write_text(json.dumps(log, indent=1) + "\n")
    return log
