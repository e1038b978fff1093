"""The explored cache bank: every candidate's spec, parameters and metrics; saved with orbax.

Parameters go to an orbax checkpoint, everything else to ``bank.json`` beside it (also what a
person or a plotting script reads), and ``manifest.json`` (gati_jax/integrity.py) records
every file's hash and the fingerprint of the base network the caches were trained on: a bank
loads only when every file checks, and only for that network.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gati_jax.atomic_dir import atomic_directory
from gati_jax.caches.selector import NUM_FEATURES, Selector
from gati_jax.caches.variants import Predictor, VariantError, VariantSpec, parse_variant
from gati_jax.inference import BaseModel, model_fingerprint
from gati_jax.integrity import (
    MANIFEST,
    IntegrityError,
    check_same_network,
    verify_manifest,
    write_manifest,
)

_JSON = "bank.json"
_PARAMS = "params"
CACHE_BANK, CACHE_BANK_VERSION = "cache_bank", 1


@dataclasses.dataclass
class Candidate:
    """One trained cache: where it sits, what it is, its parameters, thresholds and metrics."""

    position: int
    variant: str
    seed: int
    learning_rate: float
    pool_factor: int  # pooling applied to the raw activation first
    input_shape: tuple[int, ...]  # the (pooled) activation shape the predictor reads
    params: dict[str, Any]  # {"predictor": ..., "selector": ...}
    thresholds: dict[str, float]  # precision target (as a string) -> selector threshold
    metrics: dict[str, Any]

    @property
    def spec(self) -> VariantSpec:
        """The parsed variant."""
        return parse_variant(self.variant)

    @property
    def key(self) -> str:
        """A stable name: position, variant, seed and learning rate."""
        return f"p{self.position}/{self.variant}/s{self.seed}/lr{self.learning_rate:g}"


@dataclasses.dataclass
class CacheBank:
    """All explored candidates for one base network, plus the facts they were measured under."""

    num_classes: int
    selector_hidden: int
    candidates: list[Candidate]
    info: dict[str, Any]  # backend, stage latencies, splits used, targets...
    # The base network the caches read (gati_jax.inference.model_fingerprint) and where it
    # was loaded from; "" when unknown (a bank built in memory by a test).
    model_fingerprint: str = ""
    model_path: str = ""

    def made_for(self, model: BaseModel) -> CacheBank:
        """Records ``model`` as the base network these caches were made for; returns self."""
        self.model_fingerprint, self.model_path = model_fingerprint(model), model.source
        return self

    def at(self, position: int) -> list[Candidate]:
        """Candidates at one position."""
        return [c for c in self.candidates if c.position == position]

    def best(
        self, position: int, target: str = "0.99", among: Sequence[Candidate] | None = None
    ) -> Candidate:
        """The position's candidate with the highest hit rate at ``target``, then the fastest
        (of ``among`` only, where given: e.g. the candidates a profile timed)."""
        candidates = (
            self.at(position) if among is None else [c for c in among if c.position == position]
        )
        if not candidates:
            raise ValueError(f"the bank has no candidates at position {position}")
        return max(
            candidates,
            key=lambda c: (c.metrics[f"hit_rate@{target}"], -c.metrics["lookup_latency_s"]),
        )

    def frontier(self, position: int) -> list[Candidate]:
        """The position's Pareto frontier, fastest first."""
        return sorted(
            (c for c in self.at(position) if c.metrics.get("on_frontier")),
            key=lambda c: c.metrics["lookup_latency_s"],
        )


def _template(candidate: Candidate, num_classes: int, selector_hidden: int) -> dict[str, Any]:
    x = jnp.zeros((1, *candidate.input_shape), jnp.float32)
    predictor = jax.eval_shape(
        lambda: Predictor(candidate.spec, num_classes).init(jax.random.key(0), x)["params"]
    )
    selector = jax.eval_shape(
        lambda: Selector(selector_hidden).init(jax.random.key(0), jnp.zeros((1, NUM_FEATURES)))[
            "params"
        ]
    )
    return {"predictor": predictor, "selector": selector}


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def bank_to_json(bank: CacheBank) -> dict[str, Any]:
    """Everything but the parameters, as plain JSON."""
    return _json_ready(
        {
            "num_classes": bank.num_classes,
            "selector_hidden": bank.selector_hidden,
            "model_fingerprint": bank.model_fingerprint,
            "model_path": bank.model_path,
            "info": bank.info,
            "candidates": [
                {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name != "params"}
                | {"key": c.key}
                for c in bank.candidates
            ],
        }
    )


def save_bank(directory: str | os.PathLike, bank: CacheBank) -> Path:
    """Writes the bank atomically: parameters via orbax, the rest as bank.json, then the
    manifest. ``directory`` must be absent, empty or a bank this project wrote."""
    directory = Path(directory).absolute()
    with atomic_directory(directory) as staging:
        if bank.candidates:  # orbax refuses an empty tree; an empty bank (an empty plan) has none
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(
                staging / _PARAMS, {f"c{i:04d}": c.params for i, c in enumerate(bank.candidates)}
            )
            checkpointer.wait_until_finished()
        (staging / _JSON).write_text(json.dumps(bank_to_json(bank), indent=1) + "\n")
        write_manifest(
            staging,
            CACHE_BANK,
            CACHE_BANK_VERSION,
            model_fingerprint=bank.model_fingerprint,
            model_path=bank.model_path,
        )
    return directory


def add_bank_manifest(directory: str | os.PathLike, model: BaseModel) -> dict[str, Any]:
    """Writes manifest.json into a bank saved before banks carried one, recording ``model``
    (the base network you know it was made for) in it and in bank.json; parameters are
    untouched. Only for a bank you trust: its parameters must restore and be finite."""
    directory = Path(directory).absolute()
    if (directory / MANIFEST).exists():
        load_bank(directory, model)
        return verify_manifest(directory, CACHE_BANK, CACHE_BANK_VERSION)
    bank = load_bank(directory, verify=False)
    bank.made_for(model)
    meta = json.loads((directory / _JSON).read_text())
    meta.update(model_fingerprint=bank.model_fingerprint, model_path=bank.model_path)
    (directory / _JSON).write_text(json.dumps(meta, indent=1) + "\n")
    return write_manifest(
        directory,
        CACHE_BANK,
        CACHE_BANK_VERSION,
        model_fingerprint=bank.model_fingerprint,
        model_path=bank.model_path,
    )


def load_bank(
    directory: str | os.PathLike, model: BaseModel | None = None, verify: bool = True
) -> CacheBank:
    """Loads a bank written by :func:`save_bank`, every file checked against its manifest
    first (``verify=False`` skips that: only :func:`add_bank_manifest` does). Given the base
    ``model``, a bank made for another network is refused, naming both."""
    directory = Path(directory).absolute()
    meta_path = directory / _JSON
    if not meta_path.is_file() and not (directory / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no cache bank at {directory} (missing {_JSON}); run scripts/explore_caches.py first"
        )
    if verify:
        verify_manifest(
            directory,
            CACHE_BANK,
            CACHE_BANK_VERSION,
            "add one with `python scripts/add_manifest.py DIR --checkpoint BASE` "
            "(gati_jax.caches.bank.add_bank_manifest), or explore again",
        )
    try:
        meta = json.loads(meta_path.read_text())
        candidates = []
        for row in meta["candidates"]:
            fields = {
                f.name: row[f.name] for f in dataclasses.fields(Candidate) if f.name != "params"
            }
            fields["input_shape"] = tuple(fields["input_shape"])
            candidates.append(Candidate(params={}, **fields))
        bank = CacheBank(
            meta["num_classes"],
            meta["selector_hidden"],
            candidates,
            meta["info"],
            meta.get("model_fingerprint") or "",
            meta.get("model_path") or "",
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise IntegrityError(f"{meta_path} is corrupt: {type(error).__name__}: {error}") from error
    if model is not None:
        check_same_network(
            "cache bank",
            directory,
            bank.model_fingerprint,
            bank.model_path,
            model_fingerprint(model),
            model.source,
        )
    if not bank.candidates:
        return bank
    template = {
        f"c{i:04d}": _template(c, bank.num_classes, bank.selector_hidden)
        for i, c in enumerate(bank.candidates)
    }
    try:
        params = ocp.StandardCheckpointer().restore(directory / _PARAMS, template)
    except Exception as error:  # orbax raises many types; the user needs the path
        raise IntegrityError(
            f"cache parameters in {directory / _PARAMS} are missing or corrupt "
            f"({type(error).__name__}: {error})"
        ) from error
    bad = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if not np.all(np.isfinite(np.asarray(leaf)))
    ]
    if bad:
        raise IntegrityError(
            f"cache parameters in {directory / _PARAMS} hold NaN or Inf "
            f"values ({', '.join(bad[:3])})"
        )
    for i, candidate in enumerate(bank.candidates):
        candidate.params = params[f"c{i:04d}"]
    return bank


def mark_frontier(candidates: list[Candidate], hit_key: str = "hit_rate@0.99") -> None:
    """Sets metrics['on_frontier'] for candidates whose predictor no other predictor beats on
    both hit rate (its best selector's) and latency. Every selector kind of a frontier
    predictor is on the frontier too: the planner, which sees the whole trade-off on its
    tuning requests, picks among them (the thresholds' max softmax and entropy included)."""
    groups: dict[tuple, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(predictor_key(c), []).append(c)
    best = {
        key: (
            max(m.metrics["lookup_latency_s"] for m in members),
            max(m.metrics[hit_key] for m in members),
        )
        for key, members in groups.items()
    }
    for key, (lat, hit) in best.items():
        dominated = any(
            o != key and o_lat <= lat and o_hit >= hit and (o_lat < lat or o_hit > hit)
            for o, (o_lat, o_hit) in best.items()
        )
        for c in groups[key]:
            c.metrics["on_frontier"] = not dominated


def split_key(key: str, at: int = 1) -> tuple[str, str] | None:
    """(``key`` with its variant, the ``at``-th "/" part, reduced to the predictor alone, the
    selector kind) for a candidate key ``p{position}/{variant}/s{seed}/lr{rate}`` (``at`` 2
    under a kind prefix, as profiles key lookups); None where that part names no predictor
    variant (a kNN store)."""
    parts = key.split("/")
    try:
        spec = parse_variant(parts[at])
    except (IndexError, VariantError):
        return None
    parts[at] = spec.predictor.name
    return "/".join(parts), spec.selector


def predictor_key(candidate: Candidate) -> tuple:
    """What candidates that differ only in their selector kind share: position, predictor,
    seed and learning rate (and so the predictor's parameters)."""
    return (
        candidate.position,
        candidate.spec.predictor.name,
        candidate.seed,
        candidate.learning_rate,
    )
