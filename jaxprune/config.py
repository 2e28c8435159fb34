"""Sweep files: schema, presets, TOML loading, validation and grid expansion.

A sweep is a TOML file with sections ``[data]``, ``[model]``, ``[prune]``, ``[train]`` and
``[sweep]``. A field may be a single value, a list (a grid axis) or, for numbers, a range
table ``{start, stop, num, scale}``, except those that hold for the whole sweep (``axis=False``:
``eval_every``, ``checkpoint_every``, ``dtype``, ``matmul_precision``, ``formulation``). The
runs are the Cartesian product of every list-valued field and the seeds.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "ConfigError",
    "Field",
    "FIELDS",
    "PRESETS",
    "Sweep",
    "RunTable",
    "as_python",
    "load_sweep",
    "sweep_from_dict",
]


class ConfigError(ValueError):
    """A sweep the user must fix; the message names the file, the field and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One configuration field.

    Attributes:
      section: TOML section the field lives in.
      kind: ``"int"``, ``"float"``, ``"bool"`` or ``"choice"``.
      default: value used when neither the file nor the preset sets it.
      check: predicate on one value, with ``allowed`` describing it for error messages.
      allowed: human-readable description of the allowed values.
      choices: for ``kind == "choice"``, the allowed strings.
      axis: whether the field may be a list (a grid axis).
    """

    section: str
    kind: str
    default: Any
    allowed: str
    check: Callable[[Any], bool] = lambda v: True
    choices: tuple[str, ...] = ()
    axis: bool = True


def _positive(v):
    return v > 0


def _nonnegative(v):
    return v >= 0


FIELDS: dict[str, Field] = {
    # [data]
    "d": Field("data", "int", 2000, "an integer >= 1", lambda v: v >= 1),
    "n": Field("data", "int", 50, "an integer >= 1", lambda v: v >= 1),
    "n_test": Field("data", "int", 2000, "an integer >= 1", lambda v: v >= 1),
    "signal_norm": Field("data", "float", 9.0, "a number >= 0", _nonnegative),
    "signal_support": Field("data", "int", 1, "an integer >= 1 and <= d", lambda v: v >= 1),
    "noise_std": Field("data", "float", 1.0, "a number > 0", _positive),
    "noise_orthogonal": Field("data", "bool", False, "true or false"),
    "label_flip": Field("data", "float", 0.0, "a number in [0, 0.5]", lambda v: 0 <= v <= 0.5),
    # [model]
    "width": Field("model", "int", 20, "an integer >= 1", lambda v: v >= 1),
    "activation_power": Field("model", "float", 3.0, "a number >= 1", lambda v: v >= 1),
    "output_scale": Field("model", "choice", "mean", '"mean" or "sum"', choices=("mean", "sum")),
    "patch_pool": Field("model", "choice", "sum", '"sum" or "mean"', choices=("sum", "mean")),
    "bias": Field("model", "bool", False, "true or false"),
    "init": Field(
        "model", "choice", "normal", '"normal" or "uniform_fan_in"',
        choices=("normal", "uniform_fan_in"),
    ),
    "init_std": Field("model", "float", 0.01, "a number > 0", _positive),
    # [prune]
    "fraction": Field("prune", "float", 0.0, "a number in [0, 1)", lambda v: 0 <= v < 1),
    "mask": Field("prune", "choice", "bernoulli", '"bernoulli" or "exact"',
                  choices=("bernoulli", "exact")),
    "nested": Field("prune", "bool", True, "true or false"),
    # [train]
    "optimizer": Field("train", "choice", "gd", '"gd", "momentum" or "adam"',
                       choices=("gd", "momentum", "adam")),
    "learning_rate": Field("train", "float", 0.05, "a number > 0", _positive),
    "momentum": Field("train", "float", 0.9, "a number in [0, 1)", lambda v: 0 <= v < 1),
    "steps": Field("train", "int", 1500, "an integer >= 1", lambda v: v >= 1),
    "eval_every": Field("train", "int", 100, "an integer >= 1", lambda v: v >= 1, axis=False),
    "checkpoint_every": Field("train", "int", 500, "an integer >= 1", lambda v: v >= 1,
                              axis=False),
    "dtype": Field("train", "choice", "float32", '"float32" or "float64"',
                   choices=("float32", "float64"), axis=False),
    "matmul_precision": Field("train", "choice", "float32", '"float32" or "tensorfloat32"',
                              choices=("float32", "tensorfloat32"), axis=False),
    "formulation": Field("train", "choice", "auto", '"auto", "direct" or "kernel"',
                         choices=("auto", "direct", "kernel"), axis=False),
}

SECTIONS = ("data", "model", "prune", "train", "sweep")

PRESETS: dict[str, dict[str, Any]] = {
    # Cao, Chen, Belkin, Gu (NeurIPS 2022): the theory conventions, q = 3, noise orthogonal to mu.
    "cao2022": {"activation_power": 3.0, "noise_orthogonal": True},
    # Kou, Chen, Chen, Gu (ICML 2023): ReLU with bias, PyTorch-style init, noisy labels.
    "kou2023": {
        "activation_power": 1.0,
        "bias": True,
        "init": "uniform_fan_in",
        "output_scale": "sum",
        "patch_pool": "mean",
        "label_flip": 0.1,
        "learning_rate": 0.1,
        "width": 10,
        "n": 20,
        "n_test": 1000,
        "steps": 100,
    },
}

RANGE_KEYS = {"start", "stop", "num", "scale"}
RANGE_SCALES = ("linear", "log", "log1m")
#: The most runs one sweep may expand to (a guard against typos like num = 1e9).
MAX_RUNS = 10_000_000
SEEDS_ALLOWED = "a count (an integer >= 1) or a list of distinct integers in [0, 2^31)"
INT_LIMIT = 2**31  # integer fields are shapes and step counts: int32 on device


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep: every field resolved to a tuple of values (one per grid point).

    Attributes:
      name: the sweep's name (default output directory ``runs/<name>``).
      preset: the preset it started from, or ``None``.
      values: field name -> tuple of values; a 1-tuple for a fixed field.
      seeds: the seeds, in order.
      source: where it came from, for error messages.
    """

    name: str
    preset: str | None
    values: dict[str, tuple]
    seeds: tuple[int, ...]
    source: str = dataclasses.field(default="<sweep>", compare=False)

    @property
    def axes(self) -> list[str]:
        """Fields with more than one value, in schema order."""
        return [k for k in FIELDS if len(self.values[k]) > 1]

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep as nested TOML-ready tables (every field present)."""
        out: dict[str, Any] = {"name": self.name}
        if self.preset:
            out["preset"] = self.preset
        for section in SECTIONS[:-1]:
            out[section] = {
                k: (list(v) if len(v) > 1 else v[0])
                for k, v in self.values.items()
                if FIELDS[k].section == section
            }
        out["sweep"] = {"seeds": list(self.seeds)}
        return out

    def to_toml(self) -> str:
        """The resolved sweep as TOML text; ``load_sweep`` of it gives this sweep back."""
        lines = [f"name = {_toml_value(self.name)}"]
        if self.preset:
            lines.append(f"preset = {_toml_value(self.preset)}")
        for section, table in self.to_dict().items():
            if isinstance(table, dict):
                lines.append(f"\n[{section}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def differences(self, other: "Sweep") -> list[str]:
        """Names of fields (and ``seeds``/``name``) whose values differ from ``other``."""
        diff = [k for k in FIELDS if self.values[k] != other.values[k]]
        if self.seeds != other.seeds:
            diff.append("seeds")
        if self.name != other.name:
            diff.append("name")
        return diff

    def run_table(self) -> "RunTable":
        """Expands the grid: one row per run, axes in schema order, seeds innermost."""
        names = list(FIELDS) + ["seed"]
        grids = [self.values[k] for k in FIELDS] + [self.seeds]
        rows = list(itertools.product(*grids))
        columns = {}
        for i, name in enumerate(names):
            col = [r[i] for r in rows]
            kind = FIELDS[name].kind if name in FIELDS else "int"
            dtype = {"int": np.int64, "float": np.float64, "bool": np.bool_}.get(kind, object)
            columns[name] = np.asarray(col, dtype=dtype)
        return RunTable(columns)


@dataclasses.dataclass(frozen=True)
class RunTable:
    """One row per run: ``columns[field][i]`` is run ``i``'s value of ``field``."""

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["seed"])

    def row(self, i: int) -> dict[str, Any]:
        return {k: as_python(v[i]) for k, v in self.columns.items()}

    def take(self, idx) -> "RunTable":
        return RunTable({k: v[idx] for k, v in self.columns.items()})


def as_python(v):
    """A numpy scalar as the Python value it holds (strings pass through)."""
    return v.item() if isinstance(v, np.generic) else v


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, str):
        return '"' + "".join(_toml_char(c) for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_char(c: str) -> str:
    """One character of a TOML basic string: quote and backslash escaped, control characters
    as ``\\uXXXX``."""
    if c in '"\\':
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\u{ord(c):04X}"
    return c


def load_sweep(path: str | Path) -> Sweep:
    """Reads and validates a sweep file.

    Raises:
      ConfigError: naming the file and field, for any malformed or impossible input.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read sweep file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return sweep_from_dict(raw, source=str(path), default_name=path.stem)


def sweep_from_dict(raw: dict[str, Any], source: str = "<sweep>",
                    default_name: str = "sweep") -> Sweep:
    """Validates a sweep given as nested tables, as a TOML file would give it.

    Example:
      >>> sweep_from_dict({"prune": {"fraction": [0.0, 0.5]}, "sweep": {"seeds": 2}})
    """
    err = _error_reporter(source)
    if not isinstance(raw, dict):
        raise err("", "the sweep must be a table of sections")
    top_allowed = {"name", "preset", *SECTIONS}
    for key in raw:
        if key not in top_allowed:
            if key in FIELDS:
                raise err(key, f"belongs in section [{FIELDS[key].section}]")
            hint = _suggest(key, top_allowed | set(FIELDS))
            raise err(key, f"unknown top-level key{hint}; allowed: name, preset, "
                           + ", ".join(f"[{s}]" for s in SECTIONS))

    name = raw.get("name", default_name)
    # The name is a directory under runs/: one plain path component, never "." or "..".
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise err("name", "must be a non-empty string without '/' or a null byte, not '.' or "
                  "'..'")
    preset = raw.get("preset")
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        raise err("preset", f"unknown preset {preset!r}; allowed: " + ", ".join(PRESETS))

    given: dict[str, Any] = {}
    for section in SECTIONS[:-1]:
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise err(section, "must be a table")
        for key, value in table.items():
            field = FIELDS.get(key)
            if field is None or field.section != section:
                if field is not None:
                    raise err(f"{section}.{key}", f"belongs in section [{field.section}]")
                names = [k for k, f in FIELDS.items() if f.section == section]
                raise err(f"{section}.{key}", "unknown field" + _suggest(key, FIELDS)
                          + "; allowed in [" + section + "]: " + ", ".join(names))
            given[key] = value

    sweep_table = raw.get("sweep", {})
    if not isinstance(sweep_table, dict):
        raise err("sweep", "must be a table")
    for key in sweep_table:
        if key != "seeds":
            raise err(f"sweep.{key}", "unknown field" + _suggest(key, ["seeds"])
                      + "; allowed in [sweep]: seeds")
    seeds = _parse_seeds(sweep_table.get("seeds", 1), err)

    defaults = {k: f.default for k, f in FIELDS.items()}
    defaults.update(PRESETS.get(preset, {}))
    values = {}
    for key, field in FIELDS.items():
        values[key] = _parse_field(key, field, given.get(key, defaults[key]), err)

    for s in values["signal_support"]:
        for d in values["d"]:
            if s > d:
                raise err("data.signal_support", f"{s} exceeds d = {d}; allowed: "
                          + FIELDS["signal_support"].allowed)
    if values["formulation"] == ("kernel",) and set(values["optimizer"]) != {"gd"}:
        raise err("train.formulation", '"kernel" is a formulation of plain GD; it needs '
                  'optimizer = "gd"')
    runs = math.prod(len(v) for v in values.values()) * len(seeds)
    if runs > MAX_RUNS:
        raise err("", f"the grid has {runs} runs; at most {MAX_RUNS} are allowed in one sweep")
    return Sweep(name=name, preset=preset, values=values, seeds=seeds, source=source)


def _error_reporter(source: str):
    def err(where: str, what: str) -> ConfigError:
        location = f"{source}: {where}: " if where else f"{source}: "
        return ConfigError(location + what)
    return err


def _suggest(key: str, names) -> str:
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_seeds(value, err) -> tuple[int, ...]:
    where = "sweep.seeds"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise err(where, f"count {value} gives an empty grid; allowed: {SEEDS_ALLOWED}")
        if value > MAX_RUNS:  # checked before the seeds are listed
            raise err(where, f"count {value} is too large: at most {MAX_RUNS} runs are allowed "
                      "in one sweep")
        return tuple(range(value))
    if not isinstance(value, list):
        raise err(where, f"{value!r} is not allowed; allowed: {SEEDS_ALLOWED}")
    if not value:
        raise err(where, f"empty list (an empty grid); allowed: {SEEDS_ALLOWED}")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < INT_LIMIT:
            raise err(where, f"seed {s!r} is not allowed; allowed: {SEEDS_ALLOWED}")
    _check_distinct(value, where, err)
    return tuple(value)


def _check_distinct(values, where: str, err) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise err(where, f"{v!r} appears twice; values must not repeat")
        seen.add(v)


def _finite(v) -> bool:
    """Whether a number (int or float) is finite as a float: not inf, nan or a huge int."""
    return abs(v) <= sys.float_info.max


def _parse_field(key: str, field: Field, value, err) -> tuple:
    where = f"{field.section}.{key}"
    if isinstance(value, dict):
        if field.kind not in ("int", "float"):
            raise err(where, "a range table is only for numeric fields")
        if not field.axis:
            raise err(where, f"cannot be swept; give one value ({field.allowed})")
        values = _expand_range(value, field, where, err)
    elif isinstance(value, list):
        if not field.axis:
            raise err(where, f"cannot be swept; give one value ({field.allowed})")
        if not value:
            raise err(where, f"empty list (an empty grid); allowed: {field.allowed}")
        values = [_coerce(v, field, where, err) for v in value]
    else:
        values = [_coerce(value, field, where, err)]
    for v in values:
        if not field.check(v) or (field.kind == "choice" and v not in field.choices):
            raise err(where, f"{v!r} is not allowed; allowed: {field.allowed}")
        if field.kind == "int" and abs(v) >= INT_LIMIT:
            raise err(where, f"{v!r} is too large; allowed: {field.allowed}, below 2^31")
    _check_distinct(values, where, err)
    return tuple(values)


def _coerce(value, field: Field, where: str, err):
    kind = field.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise err(where, f"{value!r} is not a boolean; allowed: {field.allowed}")
        return value
    if kind == "choice":
        if not isinstance(value, str):
            raise err(where, f"{value!r} is not a string; allowed: {field.allowed}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(where, f"{value!r} is not a number; allowed: {field.allowed}")
    if not _finite(value):
        raise err(where, f"{value!r} is not finite; allowed: {field.allowed}")
    if kind == "int":
        if value != int(value):
            raise err(where, f"{value!r} is not an integer; allowed: {field.allowed}")
        return int(value)
    return float(value)


def _expand_range(table: dict, field: Field, where: str, err) -> list:
    unknown = set(table) - RANGE_KEYS
    if unknown:
        raise err(where, f"unknown range key {sorted(unknown)[0]!r}; a range table has "
                         "start, stop, num and optionally scale")
    missing = {"start", "stop", "num"} - set(table)
    if missing:
        raise err(where, f"range table misses {', '.join(sorted(missing))}")
    start, stop, num = table["start"], table["stop"], table["num"]
    scale = table.get("scale", "linear")
    for k, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v):
            raise err(where, f"range {k} {v!r} is not a finite number")
    if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_RUNS:
        raise err(where, f"range num {num!r} is not an integer in [1, {MAX_RUNS}]")
    if scale not in RANGE_SCALES:
        raise err(where, f"range scale {scale!r} is not allowed; allowed: "
                         + ", ".join(RANGE_SCALES))
    if scale == "linear":
        grid = np.linspace(start, stop, num)
    elif scale == "log":
        if start <= 0 or stop <= 0:
            raise err(where, f"a log range needs start > 0 and stop > 0, not {start!r} and "
                             f"{stop!r}")
        grid = np.geomspace(start, stop, num)
    else:
        if start >= 1 or stop >= 1:
            raise err(where, f"a log1m range needs start < 1 and stop < 1, not {start!r} and "
                             f"{stop!r}")
        grid = 1.0 - np.geomspace(1.0 - start, 1.0 - stop, num)
    if field.kind == "int":
        values = list(dict.fromkeys(int(round(v)) for v in grid))
    else:
        # 12 significant digits: 0.3 instead of linspace's 0.30000000000000004; the ends as
        # written (0.999999999999999 would round to 1).
        values = [float(f"{v:.12g}") for v in grid]
        values[0] = float(start)
        if num > 1:
            values[-1] = float(stop)
        if len(set(values)) < num:
            raise err(where, f"range points repeat at 12 significant digits; use fewer than "
                             f"num = {num} or a wider range")
    return values
