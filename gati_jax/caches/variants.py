"""The predictor design space (pool, conv, fc heads), the selector kinds, and the specs that
name each variant.

A variant is written as a short string, e.g. ``pool-k2-h64`` (average-pool to 2x2, one dense
layer of 64, then the classes), ``conv3-c16-s2-k2`` (3x3 conv to 16 channels with stride 2,
pool to 2x2, no hidden layer) or ``fc-d4-h128-h64`` (pool to 4x4, flatten, two dense layers).
A suffix names the selector when it is not the learned one: ``pool-k2-h64-msp`` scores the
predictor's own max softmax, ``pool-k2-h64-ent`` its negated entropy (caches/selector.py).
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from gati_jax.caches.pooling import POOLINGS

KINDS = ("pool", "conv", "fc")
# Selector kinds (caches/selector.py) and the suffix that names each in a variant string.
SELECTORS = ("learned", "softmax", "entropy")
_SELECTOR_SUFFIX = {"softmax": "msp", "entropy": "ent"}
_TOKEN = re.compile(r"^(?P<key>[a-z]+)(?P<value>\d+)$")


class VariantError(ValueError):
    """A variant string or its fit to a position's activation shape is invalid."""


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One predictor architecture: its kind, output grid, conv settings and hidden layers."""

    kind: str
    grid: int = 1  # k: the map is average-pooled to k x k before the dense layers
    hidden: tuple[int, ...] = ()
    conv_kernel: int = 1
    conv_channels: int = 16
    conv_stride: int = 1
    selector: str = "learned"  # one of SELECTORS; the predictor does not depend on it

    @property
    def name(self) -> str:
        """The canonical string form, the inverse of :func:`parse_variant`."""
        hidden = "".join(f"-h{h}" for h in self.hidden)
        suffix = f"-{_SELECTOR_SUFFIX[self.selector]}" if self.selector != "learned" else ""
        if self.kind == "conv":
            return (
                f"conv{self.conv_kernel}-c{self.conv_channels}-s{self.conv_stride}"
                f"-k{self.grid}{hidden}{suffix}"
            )
        return f"{self.kind}-{'k' if self.kind == 'pool' else 'd'}{self.grid}{hidden}{suffix}"

    @property
    def predictor(self) -> VariantSpec:
        """The predictor alone (the learned-selector spec): variants that differ only in their
        selector share it, its parameters and its compiled functions."""
        return dataclasses.replace(self, selector="learned")

    def with_selector(self, selector: str) -> VariantSpec:
        """This predictor with selector kind ``selector``."""
        if selector not in SELECTORS:
            raise VariantError(f"unknown selector '{selector}': one of {SELECTORS}")
        return dataclasses.replace(self, selector=selector)

    def check_fits(self, activation_shape: tuple[int, ...], where: str) -> None:
        """Raises VariantError when this variant cannot run on a (H, W, C) or (F,) activation."""
        if len(activation_shape) == 1:
            if self.kind != "fc" or self.grid != 1:
                raise VariantError(
                    f"variant '{self.name}' needs a feature map but {where} is a "
                    f"vector of {activation_shape[0]}; use 'fc-d1' variants"
                )
            return
        h, w = activation_shape[0], activation_shape[1]
        if self.kind == "conv":
            h, w = -(-h // self.conv_stride), -(-w // self.conv_stride)
        if self.grid > min(h, w):
            raise VariantError(
                f"variant '{self.name}' pools to {self.grid}x{self.grid}, larger "
                f"than the {h}x{w} map at {where}"
            )


def parse_variant(text: str) -> VariantSpec:
    """Parses a variant string such as ``pool-k2-h64`` or ``conv3-c16-s2-k2``."""
    parts = text.strip().split("-")
    head = parts[0]
    kind = head.rstrip("0123456789")
    if kind not in KINDS:
        raise VariantError(f"unknown variant '{text}': it must start with one of {KINDS}")
    fields: dict = {"kind": kind, "hidden": []}
    suffixes = {v: k for k, v in _SELECTOR_SUFFIX.items()}
    if len(parts) > 1 and parts[-1] in suffixes:
        fields["selector"] = suffixes[parts.pop()]
    if kind == "conv":
        if head == kind:
            raise VariantError(f"variant '{text}': conv needs its kernel size, e.g. conv3")
        fields["conv_kernel"] = int(head[len(kind) :])
    elif head != kind:
        raise VariantError(f"variant '{text}': only conv takes a number after its kind")
    allowed = {"pool": {"k", "h"}, "fc": {"d", "h"}, "conv": {"c", "s", "k", "h"}}[kind]
    for token in parts[1:]:
        match = _TOKEN.match(token)
        if not match or match["key"] not in allowed:
            raise VariantError(
                f"variant '{text}': cannot read '{token}' (a {kind} variant takes "
                f"{sorted(allowed)} followed by a number, then optionally a "
                f"selector suffix {sorted(suffixes)})"
            )
        key, value = match["key"], int(match["value"])
        if value <= 0:
            raise VariantError(f"variant '{text}': '{token}' must be positive")
        if key == "h":
            fields["hidden"].append(value)
        else:
            fields[{"k": "grid", "d": "grid", "c": "conv_channels", "s": "conv_stride"}[key]] = (
                value
            )
    if len(fields["hidden"]) > 2:
        raise VariantError(f"variant '{text}': at most 2 hidden layers")
    if kind == "conv" and fields["conv_kernel"] not in (1, 3):
        raise VariantError(f"variant '{text}': conv kernels are 1 or 3")
    fields["hidden"] = tuple(fields["hidden"])
    return VariantSpec(**fields)


class Predictor(nn.Module):
    """A cache's predictor: activation at a position -> logits over the base network's classes.

    ``pre_pool`` > 1: the input is the raw activation, which the predictor first pools as the
    recording did (``pool_map``); pool and fc heads do both poolings in one step.
    ``pooling`` names how (caches/pooling.py): the same averages, computed by slices (served)
    or by pooling matrices (the former form, kept for the lookup benchmark)."""

    spec: VariantSpec
    num_classes: int
    pre_pool: int = 1
    pooling: str = "slices"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if x.ndim == 4:
            pool_map, pooled_grid = POOLINGS[self.pooling]
            if self.spec.kind == "conv":
                stride = (self.spec.conv_stride, self.spec.conv_stride)
                kernel = (self.spec.conv_kernel, self.spec.conv_kernel)
                x = nn.relu(
                    nn.Conv(self.spec.conv_channels, kernel, stride)(pool_map(x, self.pre_pool))
                )
                x = pooled_grid(x, 1, self.spec.grid)
            else:
                x = pooled_grid(x, self.pre_pool, self.spec.grid)
        x = x.reshape((x.shape[0], -1))
        for width in self.spec.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)
