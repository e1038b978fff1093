"""Fault injection: nothing lost, nothing silently wrong.

Every saved artefact (base model, training checkpoints, cache bank, plan, latency profile)
refuses truncation, garbling and deletion of its files with an error naming the file
(gati_jax/integrity.py); a plan or bank refuses any base network but its own; nothing the
project did not write is replaced; a finished work directory refuses a config that changes
its results; a run that learned nothing exports nothing; requests outside the base network's
input range are refused. (Resuming after kill -9 is tests/test_training.py's.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import pytest
from conftest import ROUTER_CLASSES, ROUTER_SHAPE, fc_caches, tiny_config

from gati_jax.atomic_dir import atomic_directory
from gati_jax.caches.bank import CacheBank, Candidate, load_bank, save_bank
from gati_jax.config import ConfigError
from gati_jax.inference import BaseModel, model_fingerprint, predict_logits
from gati_jax.integrity import MANIFEST, IntegrityError, file_sha256
from gati_jax.jobs.main_job import (
    PHASE_OUTPUTS,
    PHASES,
    check_same_run,
    first_phase_to_run,
    run_main_job,
    stored_config,
)
from gati_jax.jobs.train_base import TrainingError, check_learned, train_and_evaluate
from gati_jax.models import build_network
from gati_jax.planner.costs import Profile, load_or_measure, save_profile
from gati_jax.planner.plan import Plan, load_plan, plan_deployment, save_plan
from gati_jax.system import add_manifest, load_system
from gati_jax.training.checkpointing import (
    CheckpointError,
    TrainCheckpointer,
    base_model_fingerprint,
    load_base_model,
    save_base_model,
)
from gati_jax.training.steps import create_train_state

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = np.array([0.5], np.float32), np.array([0.25], np.float32)
NETWORK_CONFIG = dict(name="mlp", width=1, hidden_sizes=(24, 16, 12, 8))


def _network():
    return build_network(ml_collections.ConfigDict(NETWORK_CONFIG), ROUTER_SHAPE, ROUTER_CLASSES)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One of each artefact, saved once; each test works on copies."""
    root = tmp_path_factory.mktemp("pristine")
    network = _network()
    for name, seed in (("model", 0), ("other_model", 1)):  # same shapes, other weights
        save_base_model(
            root / name,
            BaseModel(
                network, network.init(jax.random.key(seed)), MEAN, STD, {"model": NETWORK_CONFIG}
            ),
        )
    model = load_base_model(root / "model")
    positions = (0, 1)
    _, params = fc_caches(network, positions, ROUTER_CLASSES)
    shapes = network.activation_shapes()
    bank = CacheBank(
        ROUTER_CLASSES,
        8,
        [
            Candidate(
                p,
                "fc-d1-h8",
                0,
                0.01,
                1,
                tuple(shapes[p][1:]),
                jax.tree.map(np.asarray, params[k]),
                {"0.99": 0.5},
                {},
            )
            for k, p in enumerate(positions)
        ],
        {"positions": list(positions)},
    ).made_for(model)
    save_bank(root / "cache_bank", bank)
    plan = Plan(
        "gati",
        "joint",
        positions,
        tuple(c.key for c in bank.candidates),
        ("fc-d1-h8", "fc-d1-h8"),
        (0.3, 0.6),
        {},
    )
    save_plan(root / "plan", plan, bank)
    # A profile for this backend and model: loading it measures nothing.
    save_profile(
        root / "profile.json",
        Profile(
            jax.default_backend(),
            jax.devices()[0].device_kind,
            1,
            model_fingerprint(model),
            [1e-4 * (i + 1) for i in range(network.num_stages)],
            {},
            router_s={},
            deploy_s={},
        ),
    )
    state = create_train_state(network, optax.sgd(0.1), jax.random.key(0))
    checkpointer = TrainCheckpointer(root / "train" / "checkpoints", max_to_keep=3)
    for step in (1, 2):
        checkpointer.save(state.replace(step=state.step + step), [{"epoch": step}])
    checkpointer.close()
    return root


def _copy(pristine, tmp_path, name):
    source = pristine / name
    target = tmp_path / name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return target


def _tree_hashes(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    """64 bytes (or the whole file, if smaller) inverted in the middle; the size stays."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - 32)
    for i in range(start, min(len(data), start + 64)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


FAULTS = {
    "truncate": (truncate, "is truncated or altered"),
    "garble": (garble, "is corrupt: its sha256"),
    "delete": (delete, "is missing"),
}


def _largest(directory: Path) -> Path:
    """The largest file of an artefact but its manifest: orbax's array data."""
    return max(
        (p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST),
        key=lambda p: p.stat().st_size,
    )


# artefact -> (loader, its JSON file, error type)
ARTEFACTS = {
    "model": (lambda d: load_base_model(d), "model.json", CheckpointError),
    "cache_bank": (lambda d: load_bank(d), "bank.json", IntegrityError),
    "plan": (lambda d: load_plan(d), "plan.json", IntegrityError),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("target", ["json", "data"])
@pytest.mark.parametrize("artefact", sorted(ARTEFACTS))
def test_a_damaged_artefact_is_refused_naming_the_file(pristine, tmp_path, artefact, target, fault):
    load, json_name, error = ARTEFACTS[artefact]
    directory = _copy(pristine, tmp_path, artefact)
    path = directory / json_name if target == "json" else _largest(directory)
    damage, message = FAULTS[fault]
    damage(path)
    with pytest.raises(error, match=re.escape(str(path)) + " " + message):
        load(directory)


@pytest.mark.parametrize("artefact", sorted(ARTEFACTS))
def test_a_damaged_or_missing_manifest_is_refused(pristine, tmp_path, artefact):
    load, _, error = ARTEFACTS[artefact]
    directory = _copy(pristine, tmp_path, artefact)
    manifest = directory / MANIFEST
    good = manifest.read_text()
    # A recorded hash edited to match damaged files: the manifest's own checksum fails.
    edited = json.loads(good)
    name = sorted(edited["files"])[0]
    edited["files"][name]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(edited))
    with pytest.raises(error, match=re.escape(str(manifest)) + " is corrupt: its contents"):
        load(directory)
    truncate(manifest)
    with pytest.raises(error, match=re.escape(str(manifest)) + " is corrupt"):
        load(directory)
    manifest.unlink()
    with pytest.raises(
        error,
        match=f"{re.escape(str(directory))} has no manifest.json.*"
        r"scripts/add_manifest\.py",
    ):
        load(directory)


def test_an_artefact_from_before_manifests_loads_once_one_is_added(pristine, tmp_path):
    model_dir, bank_dir, plan_dir = (
        _copy(pristine, tmp_path, n) for n in ("model", "cache_bank", "plan")
    )
    for directory in (model_dir, bank_dir, plan_dir):
        (directory / MANIFEST).unlink()
    weights = {k: v for k, v in _tree_hashes(model_dir).items() if k != "model.json"}
    assert "made for" not in add_manifest(model_dir)
    assert {
        k: v for k, v in _tree_hashes(model_dir).items() if k not in ("model.json", MANIFEST)
    } == weights  # the weights are untouched
    model = load_base_model(model_dir)
    with pytest.raises(ValueError, match="pass the base checkpoint"):
        add_manifest(bank_dir)
    assert model_fingerprint(model) in add_manifest(bank_dir, model_dir)
    assert load_bank(bank_dir, model).model_fingerprint == model_fingerprint(model)
    add_manifest(plan_dir, model_dir)
    plan, bank = load_plan(plan_dir, model)
    assert plan.positions == (0, 1) and len(bank.candidates) == 2


def test_the_shipped_checkpoints_carry_verified_manifests():
    for name in ("fashion_mnist_resnet18", "synthetic_mlp"):
        directory = ROOT / "checkpoints" / name
        assert (directory / MANIFEST).is_file()
        # The manifest's fingerprint, read without loading, is the loaded network's.
        model = load_base_model(directory)
        assert base_model_fingerprint(directory) == model_fingerprint(model)
        assert model.input_range == (0.0, 255.0)


def test_a_model_with_non_finite_weights_is_never_saved(tmp_path):
    network = _network()
    variables = network.init(jax.random.key(0))
    variables = jax.tree.map(lambda a: np.full_like(np.asarray(a), np.nan), variables)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        save_base_model(
            tmp_path / "model", BaseModel(network, variables, MEAN, STD, {"model": NETWORK_CONFIG})
        )
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_newest_training_checkpoint_falls_back_to_the_previous(pristine, tmp_path, fault):
    directory = _copy(pristine, tmp_path, "train") / "checkpoints"
    path = _largest(directory / "2")
    FAULTS[fault][0](path)
    template = create_train_state(_network(), optax.sgd(0.1), jax.random.key(1))
    checkpointer = TrainCheckpointer(directory, max_to_keep=3)
    assert checkpointer.latest_step() == 1
    [(step, why, aside)] = checkpointer.rejected
    assert step == 2 and str(path) in why and FAULTS[fault][1] in why
    assert aside == tmp_path / "train" / "checkpoints.rejected" / "2" and aside.is_dir()
    state, history = checkpointer.restore(template)
    checkpointer.close()
    assert int(state.step) == 1 and history == [{"epoch": 1}]


def test_unsealed_and_damaged_checkpoints_leave_a_fresh_start(pristine, tmp_path):
    directory = _copy(pristine, tmp_path, "train") / "checkpoints"
    (directory / "2" / MANIFEST).unlink()  # killed after orbax wrote it, before its seal
    garble(_largest(directory / "1"))
    checkpointer = TrainCheckpointer(directory, max_to_keep=3)
    assert checkpointer.latest_step() is None
    assert [r[0] for r in checkpointer.rejected] == [2, 1]
    assert "no manifest" in checkpointer.rejected[0][1]
    checkpointer.close()
    # Nothing deleted: both are kept aside.
    assert sorted(p.name for p in (tmp_path / "train" / "checkpoints.rejected").iterdir()) == [
        "1",
        "2",
    ]


def test_a_resumed_run_whose_newest_checkpoint_is_garbled_redoes_the_lost_steps(tmp_path):
    first = train_and_evaluate(tiny_config(), str(tmp_path))
    newest = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    garble(_largest(tmp_path / "checkpoints" / str(newest)))
    again = train_and_evaluate(tiny_config(), str(tmp_path))
    assert (tmp_path / "checkpoints.rejected" / str(newest)).is_dir()
    assert again["final"] == first["final"]
    jax.tree.map(np.testing.assert_array_equal, again["state"].params, first["state"].params)


def test_a_run_that_diverges_or_learns_nothing_fails_and_exports_nothing(tmp_path):
    with pytest.raises(TrainingError, match="nothing was exported"):
        train_and_evaluate(tiny_config(epochs=1, learning_rate=1e30), str(tmp_path))
    assert not (tmp_path / "model").exists() and not (tmp_path / "final_metrics.json").exists()
    labels = np.repeat(np.arange(4), 25)
    row = {"epoch": 3, "train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.9}
    check_learned([row], labels, {"w": np.ones(3)})
    with pytest.raises(TrainingError, match="training diverged: epoch 3 ended with train loss nan"):
        check_learned([dict(row, train_loss=float("nan"))], labels, {"w": np.ones(3)})
    with pytest.raises(TrainingError, match="non-finite"):
        check_learned([row], labels, {"w": np.array([1.0, np.inf])})
    with pytest.raises(
        TrainingError,
        match=r"did not learn: validation accuracy 0\.2600.*"
        r"scores 0\.2500",
    ):
        check_learned([dict(row, val_accuracy=0.26)], labels, {"w": np.ones(3)})


def test_a_plan_or_bank_is_refused_on_another_base_network(pristine, tmp_path):
    model = load_base_model(pristine / "model")
    other = load_base_model(pristine / "other_model")  # same shapes, other weights
    shipped = load_base_model(ROOT / "checkpoints" / "synthetic_mlp")  # another network
    mine, theirs = model_fingerprint(model), model_fingerprint(other)
    assert mine != theirs
    load_plan(pristine / "plan", model)
    for wrong in (other, shipped):
        both = (
            f"made for the base network {mine} \\({re.escape(str(pristine / 'model'))}\\), "
            f"not for the one given, {model_fingerprint(wrong)} "
            f"\\({re.escape(wrong.source)}\\)"
        )
        with pytest.raises(IntegrityError, match=f"plan at .*{both}"):
            load_plan(pristine / "plan", wrong)
        with pytest.raises(IntegrityError, match=f"cache bank at .*{both}"):
            load_bank(pristine / "cache_bank", wrong)
    with pytest.raises(IntegrityError, match="made for the base network"):
        load_system(_workdir(pristine, tmp_path, pristine / "other_model"))


def _workdir(pristine, tmp_path, checkpoint: Path) -> Path:
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    shutil.copytree(pristine / "plan", workdir / "plan")
    (workdir / "config.json").write_text(json.dumps({"caches": {"checkpoint": str(checkpoint)}}))
    return workdir


def test_a_finished_workdir_loads_from_any_directory(pristine, tmp_path, monkeypatch):
    workdir = _workdir(pristine, tmp_path, pristine / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    system = load_system(workdir, max_group=4)
    images = np.random.default_rng(0).integers(0, 256, (3, *ROUTER_SHAPE), dtype=np.uint8)
    assert len(system.route(images).answer) == 3


def test_a_base_network_without_a_plan_says_how_to_make_one(pristine, tmp_path):
    model_dir = _copy(pristine, tmp_path, "model")
    with pytest.raises(
        FileNotFoundError,
        match=r"holds a base network but no planned system .*scripts/train_caches\.py",
    ):
        load_system(model_dir)


def test_inputs_outside_the_trained_range_are_refused_or_clipped_on_request(pristine):
    model = load_base_model(pristine / "model")
    assert json.loads((pristine / "model" / "model.json").read_text())["input_range"] == [
        0.0,
        255.0,
    ]
    plan, bank = load_plan(pristine / "plan", model)
    deployment = plan_deployment(plan, bank)
    router = deployment.router(model, 4)

    def route(images, on=router):
        return on.route(deployment.params, deployment.thresholds, images)

    pixels = np.random.default_rng(0).integers(0, 256, (4, *ROUTER_SHAPE), dtype=np.uint8)
    pixels[0, 0, 0, 0], pixels[3] = 255, 0  # the fourth image stays in range when scaled
    want = route(pixels)
    for same in (pixels.astype(np.float32), pixels.astype(np.float64)):
        np.testing.assert_array_equal(route(same).answer, want.answer)
    with pytest.raises(
        ValueError,
        match=r"outside \[0, 255\], the range the base network was "
        r"trained on .*max 255000 \(3 of 4 images\)",
    ):
        route(pixels.astype(np.float32) * 1000)
    with pytest.raises(ValueError, match=r"outside \[0, 255\].*min -1"):
        route(pixels.astype(np.float32) - 1)
    overflow = pixels.astype(np.float64)
    overflow[1, 0, 0, 0] = 1e300  # finite in float64, Inf in float32
    with pytest.raises(ValueError, match=r"NaN or Inf values \(1 of 4 images\) after the cast"):
        route(overflow)
    with pytest.raises(ValueError, match="outside"):
        predict_logits(model, pixels.astype(np.float32) * 1000)
    clipping = deployment.router(model, 4)
    clipping.clip_inputs = True
    scaled = pixels.astype(np.float32) * 1000
    np.testing.assert_array_equal(
        route(scaled, clipping).answer, route(np.clip(scaled, 0, 255)).answer
    )


@pytest.mark.parametrize("damage", ["truncate", "garble", "old_format"])
def test_a_damaged_latency_profile_is_refused(pristine, tmp_path, damage):
    model = load_base_model(pristine / "model")
    path = _copy(pristine, tmp_path, "profile.json")
    assert load_or_measure(path, model, {}).model == model_fingerprint(model)
    if damage == "truncate":
        truncate(path)
        message = "is corrupt or truncated"
    elif damage == "garble":  # still JSON: a measurement edited
        path.write_text(re.sub(r"0\.0001\b", "0.0009", path.read_text(), count=1))
        message = "is corrupt: its profiles do not match the checksum"
    else:
        path.write_text(json.dumps(json.loads(path.read_text())["profiles"]))
        message = "has no format version or checksum"
    with pytest.raises(IntegrityError, match=f"latency profile {re.escape(str(path))} {message}"):
        load_or_measure(path, model, {})
    if damage == "old_format":
        add_manifest(path)
        assert load_or_measure(path, model, {}).model == model_fingerprint(model)


def _user_folder(tmp_path: Path, pristine: Path) -> Path:
    """A folder the project did not write: notes and a nested base model."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("not gati_jax's")
    shutil.copytree(pristine / "model", folder / "nested_model")
    return folder


def test_no_output_replaces_a_folder_the_project_did_not_write(pristine, tmp_path):
    folder = _user_folder(tmp_path, pristine)
    before = _tree_hashes(folder)
    model = load_base_model(pristine / "model")
    bank = load_bank(pristine / "cache_bank")
    for save in (lambda: save_base_model(folder, model), lambda: save_bank(folder, bank)):
        with pytest.raises(
            FileExistsError, match="holds no gati_jax manifest.json.*nothing was deleted"
        ):
            save()
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_directory(folder):
            pass
    config = tiny_config()
    config.train.export_dir = str(folder)
    with pytest.raises(FileExistsError, match=re.escape(str(folder))):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert _tree_hashes(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging left
    # An empty folder and one the project wrote are replaced.
    (tmp_path / "empty").mkdir()
    save_base_model(tmp_path / "empty", model)
    save_base_model(tmp_path / "empty", model)
    assert load_base_model(tmp_path / "empty").variables is not None


def _smoke_config(checkpoint: Path) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("smoke", ROOT / "configs" / "smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.caches.checkpoint = str(checkpoint)
    return config


def test_the_main_job_never_trains_over_a_folder_without_a_base_model(pristine, tmp_path):
    # The slip of the issue: caches.checkpoint naming the folder that holds the networks.
    folder = _user_folder(tmp_path, pristine)
    before = _tree_hashes(folder)
    config = _smoke_config(folder)
    with pytest.raises(
        CheckpointError,
        match="no base model at .*--train_base or "
        r"caches\.train_base=True",
    ):
        run_main_job(config, str(tmp_path / "run"))
    with pytest.raises(FileExistsError, match="will not be replaced"):
        run_main_job(config, str(tmp_path / "run"), train_base=True)
    assert _tree_hashes(folder) == before
    assert not any((tmp_path / "run").iterdir())  # refused before anything was written


def _finished_workdir(pristine: Path, tmp_path: Path, config) -> Path:
    """A work directory as the main job leaves it, its phase outputs stand-ins."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("exploration.json", "plan.json", "benchmark.json", "benchmark_details.json"):
        (out / name).write_text("{}\n")
    shutil.copytree(pristine / "cache_bank", out / "cache_bank")
    shutil.copytree(pristine / "plan", out / "plan")
    (out / "config.json").write_text(json.dumps(stored_config(config), indent=1))
    log = {
        p: {
            "seconds": 1.0,
            "finished": "earlier",
            "outputs": {n: file_sha256(out / n) for n in PHASE_OUTPUTS[p]},
        }
        for p in ("explore", "plan", "benchmark")
    }
    log["explore"]["model_fingerprint"] = base_model_fingerprint(config.caches.checkpoint)
    (out / "phases.json").write_text(json.dumps(log))
    return out


def test_a_finished_workdir_refuses_a_config_that_changes_its_results(pristine, tmp_path):
    base = _copy(pristine, tmp_path, "model")
    config = _smoke_config(base)
    out = _finished_workdir(pristine, tmp_path, config)
    stored = (out / "config.json").read_text()
    for key, value, phase in (
        ("planner.eps", 0.2, "plan"),
        ("caches.epochs", 1, "explore"),
        ("workload.length", 7, "benchmark"),
    ):
        changed = _smoke_config(base)
        section, name = key.split(".")
        old = changed[section][name]
        changed[section][name] = value
        with pytest.raises(
            ConfigError,
            match=rf"changed {re.escape(key)} \({old} -> {value}\)"
            rf".*--redo={phase} ",
        ):
            run_main_job(changed, str(out))
        assert (out / "config.json").read_text() == stored  # the record is not overwritten
        # Redoing that phase (or an earlier one) accepts the new value.
        log = json.loads((out / "phases.json").read_text())
        check_same_run(out, log, stored_config(changed), PHASES.index(phase), False)
    # Keys that change how, not what: the device count.
    relocated = _smoke_config(base)
    relocated.mesh.devices = 1
    check_same_run(
        out,
        json.loads((out / "phases.json").read_text()),
        stored_config(relocated),
        len(PHASES) - 1,
        False,
    )
    # The same network at the same path, with other weights: refused, naming both.
    made_for = base_model_fingerprint(base)
    shutil.rmtree(base)
    shutil.copytree(pristine / "other_model", base)
    with pytest.raises(
        CheckpointError,
        match=f"made for the base network {made_for}, but "
        f".* now holds the base network "
        f"{base_model_fingerprint(base)}.*--redo=explore",
    ):
        run_main_job(_smoke_config(base), str(out))


def test_a_deleted_or_changed_phase_output_is_redone(pristine, tmp_path):
    out = _finished_workdir(pristine, tmp_path, _smoke_config(pristine / "model"))
    log = json.loads((out / "phases.json").read_text())
    assert first_phase_to_run(out, log, (), False) == (PHASES.index("report"), "always")
    (out / "benchmark.json").write_text("[]\n")
    index, why = first_phase_to_run(out, log, (), False)
    assert (PHASES[index], why) == (
        "benchmark",
        f"{out / 'benchmark.json'} changed after the phase wrote it",
    )
    shutil.rmtree(out / "plan")
    index, why = first_phase_to_run(out, log, (), False)
    assert (PHASES[index], why) == ("plan", f"{out / 'plan' / MANIFEST} is missing")
    assert first_phase_to_run(out, log, ("explore",), False) == (1, "asked for")
    assert first_phase_to_run(out, log, (), True) == (0, "training the base network")
