"""Shared test helpers. float64 is enabled for the whole session so that float64 reference
checks and float32 runs see one consistent JAX configuration."""

import copy

import jax
import pytest

jax.config.update("jax_enable_x64", True)

from jaxprune.config import sweep_from_dict  # noqa: E402

#: A sweep small enough for a test: every field a test does not care about is tiny.
TINY = {
    "name": "tiny",
    "data": {"d": 40, "n": 8, "n_test": 64, "signal_norm": 3.0},
    "model": {"width": 4},
    "prune": {"fraction": [0.0, 0.5]},
    "train": {"steps": 20, "eval_every": 5, "checkpoint_every": 10, "learning_rate": 0.1},
    "sweep": {"seeds": 2},
}


def tiny_dict(**sections):
    """``TINY`` with some sections' fields replaced: ``tiny_dict(prune={"fraction": 0.3})``."""
    raw = copy.deepcopy(TINY)
    for section, fields in sections.items():
        if isinstance(fields, dict):
            raw.setdefault(section, {}).update(fields)
        else:
            raw[section] = fields
    return raw


def tiny_sweep(**sections):
    return sweep_from_dict(tiny_dict(**sections))


@pytest.fixture
def tiny():
    return tiny_sweep
