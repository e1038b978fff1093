"""``train_caches.py``'s job, end to end and resumable: base network, exploration, plan,
benchmark, report.

Each phase writes its outputs into the work directory and is recorded in ``phases.json``
when it finishes; running again skips finished phases unless they are named in ``redo``.
The benchmark phase serves ``gati-online`` (online learning) beside the static policies when
``online.enabled``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections

from gati_jax import sharding
from gati_jax.jobs.exploration import run_exploration
from gati_jax.config import validate_config
from gati_jax.jobs.report import write_report
from gati_jax.jobs.planning import run_planning
from gati_jax.jobs.benchmark import run_benchmark
from gati_jax.training.loop import train_and_evaluate

PHASES = ("base", "explore", "plan", "benchmark", "report")


def _phase_log(workdir: Path) -> dict[str, Any]:
    path = workdir / "phases.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt ({error}); delete it to run every phase again")


def run_main_job(config: ml_collections.ConfigDict, workdir: str,
                 redo: Sequence[str] = (), train_base: bool = False) -> dict[str, Any]:
    """Runs every unfinished phase and returns the phase log (seconds per phase)."""
    validate_config(config)
    sharding.initialize(config.mesh)  # several hosts: join before any device is touched
    unknown = sorted(set(redo) - set(PHASES))
    if unknown:
        raise ValueError(f"unknown phases to redo {unknown}; phases: {list(PHASES)}")
    out = Path(workdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    log = _phase_log(out)
    # The config a later load_system(workdir) reads the base checkpoint from.
    (out / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
    checkpoint = Path(config.caches.checkpoint)
    needs_base = train_base or "base" in redo or not (checkpoint / "model.json").is_file()

    def base() -> None:
        if not needs_base:
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
    for phase in PHASES:
        done = phase in log and phase not in redo and not (phase == "base" and needs_base)
        if phase == "report" or not done:
            print(f"== {phase}")
            started = time.time()
            steps[phase]()
            log[phase] = {"seconds": round(time.time() - started, 1),
                          "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            (out / "phases.json").write_text(json.dumps(log, indent=1) + "\n")
        else:
            print(f"== {phase}: finished earlier ({log[phase]['finished']}), skipped")
    return log
