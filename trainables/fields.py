"""One vocabulary for the values a user gives: the spec's fields (grid/spec.py) and the pruning
methods' options (trainables/methods/) are checked by these functions, raise one error type and say
it one way, in one line: 'field: what is wrong; what is allowed'. No Ray, no MLflow."""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from apgrid.errors import ApgridError, show_value

MAX_INT = 2**31 - 1  # counts, sizes, steps: what torch and Ray take as C ints
# `scheme://...`: a URI (s3://bucket/runs/x, gs://, file://), not a folder name; Path() would
# make it the local folder ./s3:/bucket/runs/x.
URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
OUTPUT_SCHEMES = ("s3",)  # object stores a grid writes its results to (grid/objectstore.py)


def remote_output(output: str | Path) -> bool:
    """Whether `output` is an object-store URI (its durable results there, a local working folder
    beside); raises FieldError for a URI whose scheme is not supported."""
    scheme = URI_SCHEME.match(str(output))
    if scheme and scheme.group(1) not in OUTPUT_SCHEMES:
        raise FieldError(
            f"output: {show_value(str(output))} is a URI ({scheme.group(1)}://), not supported: "
            f"give an s3:// URI, or a local or shared-volume folder (docs/cluster.md)"
        )
    return bool(scheme)


class FieldError(ApgridError, ValueError):
    """A value a field cannot take, phrased as 'field: what is wrong; what is allowed' (exit 2)."""


def whole(value, where: str, minimum: int | None = None, maximum: int = MAX_INT, also=()) -> int:
    """A whole number in [minimum, maximum], or one of `also` (ATMC's bits: 0 = no quantisation)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"{where}: must be a whole number, got {show_value(value)}")
    if value in also:
        return value
    extra = f"; also allowed: {', '.join(map(str, also))}" if also else ""
    if minimum is not None and value < minimum:
        raise FieldError(f"{where}: {show_value(value)} is below the minimum {minimum}{extra}")
    if value > maximum:
        raise FieldError(f"{where}: {show_value(value)} is above the maximum {maximum}{extra}")
    return value


def number(value, where: str, low: float, high: float, high_open: bool = False) -> float:
    """A finite number in [low, high], or [low, high) when `high_open`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(f"{where}: must be a number, got {show_value(value)}")
    if not math.isfinite(value):
        raise FieldError(f"{where}: {show_value(value)} is not a finite number")
    too_high = value >= high if high_open else value > high
    if value < low or too_high:
        bracket = ")" if high_open else "]"
        raise FieldError(f"{where}: {show_value(value)} is outside [{low}, {high}{bracket}")
    return float(value)


def output_folder(output: str | Path) -> Path:
    """A grid's output folder as an absolute local path (a shared volume's on a cluster); for an
    s3:// URI, the local working folder of the grid stored there (Ray Tune's trial folders,
    MLflow's SQLite store, staged shards, the report): APGRID_WORKDIR/<hash of the URI>. Any other
    URI is refused, rather than made a folder named after it."""
    if remote_output(output):
        key = hashlib.sha256(str(output).encode()).hexdigest()[:16]
        return Path(os.environ.get("APGRID_WORKDIR", "~/.cache/apgrid/runs")).expanduser() / key
    return Path(output).expanduser().resolve()


def flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"{where}: {show_value(value)} is not true or false")
    return value


def choice(value, where: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        what = (
            f"unknown {show_value(value)}" if isinstance(value, str) else f"{show_value(value)} is not a name"
        )
        raise FieldError(f"{where}: {what}; allowed: {', '.join(sorted(allowed))}")
    return value


def mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise FieldError(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def check_keys(raw: dict, allowed, prefix: str) -> None:
    """Every key of `raw` among `allowed`; `prefix` is the field path the keys extend ('a.b.')."""
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            raise FieldError(
                f"{prefix}{field_name(key)}: unknown field; allowed: {', '.join(allowed) or 'none'}"
            )


def field_name(key) -> str:
    """A mapping key as a field name in a message (odd keys shown as values, on one line)."""
    return key if isinstance(key, str) and key.isprintable() and key.isascii() else show_value(key)


# -- a pruning method's options: their defaults and checks --------------------------------------


@dataclass(frozen=True)
class Number:
    default: float
    low: float
    high: float

    def check(self, value, where: str) -> float:
        return number(value, where, self.low, self.high)


@dataclass(frozen=True)
class Whole:
    default: int
    minimum: int
    maximum: int = MAX_INT
    also: tuple[int, ...] = ()  # values allowed outside [minimum, maximum] (ATMC: 0 = no quantisation)

    def check(self, value, where: str) -> int:
        return whole(value, where, self.minimum, self.maximum, self.also)


@dataclass(frozen=True)
class Choice:
    default: str
    allowed: tuple[str, ...]

    def check(self, value, where: str) -> str:
        return choice(value, where, self.allowed)


@dataclass(frozen=True)
class Flag:
    default: bool

    def check(self, value, where: str) -> bool:
        return flag(value, where)


@dataclass(frozen=True)
class LayerSparsity:
    """Per-layer sparsities {layer name: sparsity in [0, 1)}; the spec checks the names against
    each architecture's prunable layers."""

    default: dict = field(default_factory=dict)

    def check(self, value, where: str) -> dict:
        layers = mapping(value, where)
        return {str(k): number(v, f"{where}.{k}", 0.0, 1.0, high_open=True) for k, v in layers.items()}
