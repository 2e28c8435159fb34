"""Sweep files: error messages for bad input, grid expansion, presets, defaults, round trip."""

import numpy as np
import pytest

from jaxprune import config
from jaxprune.config import FIELDS, ConfigError, load_sweep, sweep_from_dict

SEEDS_ALLOWED = "a count (an integer >= 1) or a list of distinct integers in [0, 2^31)"
NAME_RULE = "name: must be a non-empty string without '/' or a null byte, not '.' or '..'"


def load_text(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_sweep(path)


def error_of(tmp_path, text):
    """The message ``load_sweep`` raises for ``text``, without the ``PATH: `` prefix."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file, the field and what is allowed.

BAD = {
    # unknown names, with the closest name suggested
    "unknown field": (
        "[model]\nwidht = 3",
        "model.widht: unknown field (did you mean 'width'?); allowed in [model]: width, "
        "activation_power, output_scale, patch_pool, bias, init, init_std"),
    "unknown sweep field": (
        "[sweep]\nseed = 3",
        "sweep.seed: unknown field (did you mean 'seeds'?); allowed in [sweep]: seeds"),
    "unknown top-level key": (
        'preest = "kou2023"',
        "preest: unknown top-level key (did you mean 'preset'?); allowed: name, preset, "
        "[data], [model], [prune], [train], [sweep]"),
    "unknown section": (
        "[modle]\nwidth = 3",
        "modle: unknown top-level key (did you mean 'model'?); allowed: name, preset, "
        "[data], [model], [prune], [train], [sweep]"),
    "field in another section": ("[data]\nwidth = 3", "data.width: belongs in section [model]"),
    "field at top level": ("learning_rate = 0.1", "learning_rate: belongs in section [train]"),
    "section not a table": ("data = 3", "data: must be a table"),
    # wrong types
    "string for a number": ('[data]\nd = "40"', "data.d: '40' is not a number; allowed: an "
                                                "integer >= 1"),
    "float for an int": ("[data]\nd = 2.5", "data.d: 2.5 is not an integer; allowed: an "
                                            "integer >= 1"),
    "number for a bool": ("[model]\nbias = 1", "model.bias: 1 is not a boolean; allowed: true "
                                               "or false"),
    "string for a bool": ('[data]\nnoise_orthogonal = "true"',
                          "data.noise_orthogonal: 'true' is not a boolean; allowed: true or "
                          "false"),
    "bool for a number": ("[data]\nsignal_norm = true", "data.signal_norm: True is not a "
                                                        "number; allowed: a number >= 0"),
    "number for a choice": ("[model]\ninit = 3", 'model.init: 3 is not a string; allowed: '
                                                 '"normal" or "uniform_fan_in"'),
    "list inside a list": ("[prune]\nfraction = [[0.1]]", "prune.fraction: [0.1] is not a "
                                                          "number; allowed: a number in [0, 1)"),
    "nan": ("[data]\nsignal_norm = nan", "data.signal_norm: nan is not finite; allowed: a "
                                         "number >= 0"),
    "inf": ("[train]\nlearning_rate = inf", "train.learning_rate: inf is not finite; allowed: "
                                            "a number > 0"),
    # impossible values
    "fraction 1": ("[prune]\nfraction = 1.0", "prune.fraction: 1.0 is not allowed; allowed: a "
                                              "number in [0, 1)"),
    "negative fraction in a list": ("[prune]\nfraction = [0.0, -0.1]",
                                    "prune.fraction: -0.1 is not allowed; allowed: a number "
                                    "in [0, 1)"),
    "d = 0": ("[data]\nd = 0", "data.d: 0 is not allowed; allowed: an integer >= 1"),
    "n < 0": ("[data]\nn = -1", "data.n: -1 is not allowed; allowed: an integer >= 1"),
    "width = 0": ("[model]\nwidth = 0", "model.width: 0 is not allowed; allowed: an integer "
                                        ">= 1"),
    "n_test = 0": ("[data]\nn_test = 0", "data.n_test: 0 is not allowed; allowed: an integer "
                                         ">= 1"),
    "huge int": ("[data]\nd = 99999999999999999999",
                 "data.d: 99999999999999999999 is too large; allowed: an integer >= 1, below "
                 "2^31"),
    "activation_power < 1": ("[model]\nactivation_power = 0.5",
                             "model.activation_power: 0.5 is not allowed; allowed: a number "
                             ">= 1"),
    "label_flip > 0.5": ("[data]\nlabel_flip = 0.6", "data.label_flip: 0.6 is not allowed; "
                                                     "allowed: a number in [0, 0.5]"),
    "learning_rate 0": ("[train]\nlearning_rate = 0", "train.learning_rate: 0.0 is not "
                                                      "allowed; allowed: a number > 0"),
    "learning_rate < 0": ("[train]\nlearning_rate = [0.1, -0.1]",
                          "train.learning_rate: -0.1 is not allowed; allowed: a number > 0"),
    "noise_std 0": ("[data]\nnoise_std = 0", "data.noise_std: 0.0 is not allowed; allowed: a "
                                             "number > 0"),
    "momentum 1": ("[train]\nmomentum = 1", "train.momentum: 1.0 is not allowed; allowed: a "
                                            "number in [0, 1)"),
    "signal_support > d": ("[data]\nd = 40\nsignal_support = 41",
                           "data.signal_support: 41 exceeds d = 40; allowed: an integer >= 1 "
                           "and <= d"),
    "signal_support > one of the d": ("[data]\nd = [40, 10]\nsignal_support = [5, 20]",
                                      "data.signal_support: 20 exceeds d = 10; allowed: an "
                                      "integer >= 1 and <= d"),
    "unknown preset": ('preset = "cao2023"', "preset: unknown preset 'cao2023'; allowed: "
                                             "cao2022, kou2023"),
    "preset not a string": ('preset = ["kou2023"]', "preset: unknown preset ['kou2023']; "
                                                    "allowed: cao2022, kou2023"),
    "unknown init": ('[model]\ninit = "xavier"', "model.init: 'xavier' is not allowed; "
                                                 'allowed: "normal" or "uniform_fan_in"'),
    "unknown optimizer": ('[train]\noptimizer = ["gd", "sgd"]',
                          "train.optimizer: 'sgd' is not allowed; allowed: \"gd\", "
                          "\"momentum\" or \"adam\""),
    "unknown mask": ('[prune]\nmask = "random"', "prune.mask: 'random' is not allowed; "
                                                 'allowed: "bernoulli" or "exact"'),
    "unknown dtype": ('[train]\ndtype = "float16"', "train.dtype: 'float16' is not allowed; "
                                                    'allowed: "float32" or "float64"'),
    "unknown matmul_precision": ('[train]\nmatmul_precision = "tf32"',
                                 "train.matmul_precision: 'tf32' is not allowed; allowed: "
                                 '"float32" or "tensorfloat32"'),
    "matmul_precision not a string": ("[train]\nmatmul_precision = 32",
                                      "train.matmul_precision: 32 is not a string; allowed: "
                                      '"float32" or "tensorfloat32"'),
    "unknown formulation": ('[train]\nformulation = "gram"',
                            "train.formulation: 'gram' is not allowed; allowed: \"auto\", "
                            '"direct" or "kernel"'),
    "kernel formulation of adam": ('[train]\noptimizer = ["gd", "adam"]\nformulation = "kernel"',
                                   'train.formulation: "kernel" is a formulation of plain GD; '
                                   'it needs optimizer = "gd"'),
    "name with a slash": ('name = "a/b"', NAME_RULE),
    "empty name": ('name = ""', NAME_RULE),
    "name of the parent directory": ('name = ".."', NAME_RULE),
    "name of this directory": ('name = "."', NAME_RULE),
    "name with a null byte": ('name = "a\\u0000b"', NAME_RULE),
    # ranges
    "log range from 0": ('[train]\nlearning_rate = {start = 0, stop = 1, num = 3, '
                         'scale = "log"}',
                         "train.learning_rate: a log range needs start > 0 and stop > 0, not "
                         "0 and 1"),
    "log range from < 0": ('[data]\nsignal_norm = {start = -1.0, stop = 4, num = 3, '
                           'scale = "log"}',
                           "data.signal_norm: a log range needs start > 0 and stop > 0, not "
                           "-1.0 and 4"),
    "log1m range to 1": ('[prune]\nfraction = {start = 0.5, stop = 1.0, num = 3, '
                         'scale = "log1m"}',
                         "prune.fraction: a log1m range needs start < 1 and stop < 1, not 0.5 "
                         "and 1.0"),
    "linear range past 1": ("[prune]\nfraction = {start = 0.5, stop = 1.5, num = 3}",
                            "prune.fraction: 1.0 is not allowed; allowed: a number in [0, 1)"),
    "range num 0": ("[prune]\nfraction = {start = 0, stop = 0.5, num = 0}",
                    "prune.fraction: range num 0 is not an integer in [1, 10000000]"),
    "grid too large": ("[data]\nd = {start = 1, stop = 3000, num = 3000}\n"
                       "[prune]\nfraction = {start = 0, stop = 0.9, num = 5000}",
                       "the grid has 15000000 runs; at most 10000000 are allowed in one sweep"),
    "range num float": ("[prune]\nfraction = {start = 0, stop = 0.5, num = 2.5}",
                        "prune.fraction: range num 2.5 is not an integer in [1, 10000000]"),
    "range start string": ('[prune]\nfraction = {start = "0", stop = 0.5, num = 3}',
                           "prune.fraction: range start '0' is not a finite number"),
    "range unknown scale": ('[prune]\nfraction = {start = 0, stop = 0.5, num = 3, '
                            'scale = "exp"}',
                            "prune.fraction: range scale 'exp' is not allowed; allowed: "
                            "linear, log, log1m"),
    "range misses stop": ("[prune]\nfraction = {start = 0, num = 3}",
                          "prune.fraction: range table misses stop"),
    "range unknown key": ("[prune]\nfraction = {start = 0, stop = 0.5, num = 3, step = 2}",
                          "prune.fraction: unknown range key 'step'; a range table has start, "
                          "stop, num and optionally scale"),
    "range of a bool": ("[model]\nbias = {start = 0, stop = 1, num = 2}",
                        "model.bias: a range table is only for numeric fields"),
    "range of a fixed field": ("[train]\neval_every = {start = 1, stop = 5, num = 3}",
                               "train.eval_every: cannot be swept; give one value (an "
                               "integer >= 1)"),
    "list of a fixed field": ('[train]\ndtype = ["float32", "float64"]',
                              'train.dtype: cannot be swept; give one value ("float32" or '
                              '"float64")'),
    "list of matmul_precision": ('[train]\nmatmul_precision = ["float32", "tensorfloat32"]',
                                 "train.matmul_precision: cannot be swept; give one value "
                                 '("float32" or "tensorfloat32")'),
    "list of formulation": ('[train]\nformulation = ["direct", "kernel"]',
                            "train.formulation: cannot be swept; give one value (\"auto\", "
                            '"direct" or "kernel")'),
    "repeated values": ("[prune]\nfraction = [0.5, 0.0, 0.5]",
                        "prune.fraction: 0.5 appears twice; values must not repeat"),
    # empty grids and bad seeds
    "empty list": ("[prune]\nfraction = []", "prune.fraction: empty list (an empty grid); "
                                             "allowed: a number in [0, 1)"),
    "seeds = 0": ("[sweep]\nseeds = 0", f"sweep.seeds: count 0 gives an empty grid; allowed: "
                                        f"{SEEDS_ALLOWED}"),
    "seeds = []": ("[sweep]\nseeds = []", f"sweep.seeds: empty list (an empty grid); allowed: "
                                          f"{SEEDS_ALLOWED}"),
    "negative seed": ("[sweep]\nseeds = [3, -1]", f"sweep.seeds: seed -1 is not allowed; "
                                                  f"allowed: {SEEDS_ALLOWED}"),
    "seed 2^31": ("[sweep]\nseeds = [2147483648]", f"sweep.seeds: seed 2147483648 is not "
                                                   f"allowed; allowed: {SEEDS_ALLOWED}"),
    "float seed": ("[sweep]\nseeds = [1.0]", f"sweep.seeds: seed 1.0 is not allowed; allowed: "
                                             f"{SEEDS_ALLOWED}"),
    "repeated seed": ("[sweep]\nseeds = [1, 2, 1]", "sweep.seeds: 1 appears twice; values "
                                                    "must not repeat"),
    "seeds a string": ('[sweep]\nseeds = "3"', f"sweep.seeds: '3' is not allowed; allowed: "
                                               f"{SEEDS_ALLOWED}"),
    "seeds a bool": ("[sweep]\nseeds = true", f"sweep.seeds: True is not allowed; allowed: "
                                              f"{SEEDS_ALLOWED}"),
    "seeds a float": ("[sweep]\nseeds = 2.5", f"sweep.seeds: 2.5 is not allowed; allowed: "
                                              f"{SEEDS_ALLOWED}"),
    "seed count too large": ("[sweep]\nseeds = 100000000000",
                             "sweep.seeds: count 100000000000 is too large: at most 10000000 "
                             "runs are allowed in one sweep"),
    "seed count past the run limit": ("[sweep]\nseeds = 2000000000",
                                      "sweep.seeds: count 2000000000 is too large: at most "
                                      "10000000 runs are allowed in one sweep"),
}


@pytest.mark.parametrize("text, expected", list(BAD.values()), ids=list(BAD))
def test_bad_sweep_names_file_field_and_allowed(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


@pytest.mark.parametrize("text, problem", [
    ("[data\nd = 3", "Expected ']' at the end of a table declaration (at line 1, column 6)"),
    ("[data]\nd = ", "Invalid value (at end of document)"),
    ("[data]\nd = 3\nd = 4", "Cannot overwrite a value (at end of document)"),
    ('name = "a\nb"', "Illegal character '\\n' (at line 1, column 10)"),
])
def test_malformed_toml(tmp_path, text, problem):
    assert error_of(tmp_path, text) == f"not valid TOML: {problem}"


def test_unreadable_files(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not valid TOML: not UTF-8 text$"):
        load_sweep(tmp_path / "latin1.toml")
    with pytest.raises(ConfigError) as info:
        load_sweep(tmp_path / "missing.toml")
    assert str(info.value) == (f"{tmp_path / 'missing.toml'}: cannot read sweep file "
                               "(No such file or directory)")
    with pytest.raises(ConfigError, match=r": cannot read sweep file \(Is a directory\)$"):
        load_sweep(tmp_path)


def test_sweep_from_dict_names_its_source():
    with pytest.raises(ConfigError) as info:
        sweep_from_dict({"model": {"widht": 3}})
    assert str(info.value).startswith("<sweep>: model.widht: unknown field (did you mean "
                                      "'width'?)")
    with pytest.raises(ConfigError, match=r"^mine: data\.d: 0 is not allowed"):
        sweep_from_dict({"data": {"d": 0}}, source="mine")


def test_boundary_values_are_allowed(tmp_path):
    sweep = load_text(tmp_path, """
        [data]
        d = 5
        signal_support = 5
        label_flip = 0.5
        signal_norm = 0
        [model]
        activation_power = 1
        [prune]
        fraction = [0, 0.999]
        [train]
        momentum = 0
        [sweep]
        seeds = [0, 2147483647]
    """)
    v = sweep.values
    assert (v["d"], v["signal_support"], v["label_flip"], v["signal_norm"]) == (
        (5,), (5,), (0.5,), (0.0,))
    assert v["activation_power"] == (1.0,) and v["momentum"] == (0.0,)
    assert v["fraction"] == (0.0, 0.999)
    assert sweep.seeds == (0, 2**31 - 1)


def test_matmul_precision(tmp_path):
    """TF32 products are a [train] option, one value per sweep; float32 by default."""
    assert load_text(tmp_path, "").values["matmul_precision"] == ("float32",)
    sweep = load_text(tmp_path, '[train]\nmatmul_precision = "tensorfloat32"')
    assert sweep.values["matmul_precision"] == ("tensorfloat32",) and sweep.axes == []
    assert 'matmul_precision = "tensorfloat32"' in sweep.to_toml()


def test_formulation(tmp_path):
    """Plain GD's formulation is a [train] option, one value per sweep; "auto" by default.
    "direct" also holds for the optax optimizers (they run only that one)."""
    assert load_text(tmp_path, "").values["formulation"] == ("auto",)
    sweep = load_text(tmp_path, '[train]\noptimizer = ["gd", "adam"]\nformulation = "direct"')
    assert sweep.values["formulation"] == ("direct",) and sweep.axes == ["optimizer"]
    assert 'formulation = "direct"' in sweep.to_toml()


def test_types_are_normalized(tmp_path):
    """Integers given as whole floats become ints; ints for float fields become floats."""
    sweep = load_text(tmp_path, "[data]\nd = [40.0, 80]\nsignal_norm = 3\n"
                                "[model]\nbias = [true, false]\n")
    assert sweep.values["d"] == (40, 80)
    assert all(type(x) is int for x in sweep.values["d"])
    assert sweep.values["signal_norm"] == (3.0,) and type(sweep.values["signal_norm"][0]) is float
    assert sweep.values["bias"] == (True, False)


# ---------------------------------------------------------------------------------------------
# Grid expansion.


def test_lists_are_axes_and_keep_their_order(tmp_path):
    sweep = load_text(tmp_path, '[prune]\nfraction = [0.9, 0.0, 0.5]\nmask = ["exact", '
                                '"bernoulli"]\n[data]\nd = [80]\n')
    assert sweep.values["fraction"] == (0.9, 0.0, 0.5)
    assert sweep.values["mask"] == ("exact", "bernoulli")
    assert sweep.values["d"] == (80,)
    assert sweep.axes == ["fraction", "mask"]


def test_linear_range(tmp_path):
    sweep = load_text(tmp_path, "[prune]\nfraction = {start = 0, stop = 0.9, num = 4}\n"
                                "[train]\nlearning_rate = {start = 0.2, stop = 0.1, num = 3, "
                                'scale = "linear"}\n')
    assert sweep.values["fraction"] == (0.0, 0.3, 0.6, 0.9)  # 0.3, not 0.30000000000000004
    assert sweep.values["learning_rate"] == (0.2, 0.15, 0.1)


def test_log_range(tmp_path):
    sweep = load_text(tmp_path, "[train]\nlearning_rate = {start = 0.001, stop = 0.1, num = 5, "
                                'scale = "log"}\n')
    assert sweep.values["learning_rate"] == pytest.approx(np.geomspace(1e-3, 0.1, 5), rel=1e-11)
    assert sweep.values["learning_rate"][::2] == (0.001, 0.01, 0.1)


def test_log1m_range(tmp_path):
    sweep = load_text(tmp_path, "[prune]\nfraction = {start = 0.5, stop = 0.99, num = 3, "
                                'scale = "log1m"}\n')
    expected = 1 - np.geomspace(0.5, 0.01, 3)  # 0.5, 1 - sqrt(0.005), 0.99
    assert sweep.values["fraction"] == pytest.approx(expected, rel=1e-11)
    assert sweep.values["fraction"][1] == pytest.approx(1 - 0.005**0.5, rel=1e-11)
    assert (sweep.values["fraction"][0], sweep.values["fraction"][2]) == (0.5, 0.99)


def test_a_range_keeps_its_ends_as_written(tmp_path):
    sweep = load_text(tmp_path, "[prune]\nfraction = {start = 0.5, stop = 0.999999999999999, "
                                'num = 3, scale = "log1m"}\n')
    assert sweep.values["fraction"][::2] == (0.5, 0.999999999999999)  # not rounded to 1
    with pytest.raises(ConfigError, match=r"prune.fraction: range points repeat at 12 "
                                          r"significant digits; use fewer than num = 3"):
        load_text(tmp_path, "[prune]\nfraction = {start = 0.5, stop = 0.5000000000001, "
                            "num = 3}\n")


def test_single_point_range(tmp_path):
    sweep = load_text(tmp_path, "[data]\nsignal_norm = {start = 4, stop = 8, num = 1}\n")
    assert sweep.values["signal_norm"] == (4.0,)


def test_integer_ranges_round_and_dedupe(tmp_path):
    sweep = load_text(tmp_path, """
        [data]
        d = {start = 10, stop = 1000, num = 3, scale = "log"}
        n = {start = 1, stop = 3, num = 5}
        [model]
        width = {start = 2, stop = 3, num = 4}
    """)
    assert sweep.values["d"] == (10, 100, 1000)
    # linspace 1, 1.5, 2, 2.5, 3 rounds (half to even) to 1, 2, 2, 2, 3.
    assert sweep.values["n"] == (1, 2, 3)
    # 2, 2.33, 2.67, 3 rounds to 2, 2, 3, 3.
    assert sweep.values["width"] == (2, 3)
    assert all(type(x) is int for k in ("d", "n", "width") for x in sweep.values[k])


@pytest.mark.parametrize("text, seeds", [
    ("", (0,)),
    ("[sweep]\nseeds = 3", (0, 1, 2)),
    ("[sweep]\nseeds = [7, 2, 40]", (7, 2, 40)),
])
def test_seeds(tmp_path, text, seeds):
    assert load_text(tmp_path, text).seeds == seeds


def test_run_table_is_the_cartesian_product(tmp_path):
    sweep = load_text(tmp_path, """
        [data]
        d = [40, 80]
        [model]
        init = ["normal", "uniform_fan_in"]
        [prune]
        fraction = [0.0, 0.5, 0.9]
        [train]
        learning_rate = 0.2
        [sweep]
        seeds = [5, 3]
    """)
    assert sweep.axes == ["d", "init", "fraction"]
    table = sweep.run_table()
    assert len(table) == 2 * 2 * 3 * 2
    got = list(zip(table.columns["d"], table.columns["init"], table.columns["fraction"],
                   table.columns["seed"]))
    expected = [(d, i, f, s) for d in (40, 80) for i in ("normal", "uniform_fan_in")
                for f in (0.0, 0.5, 0.9) for s in (5, 3)]
    assert got == expected
    assert list(table.columns) == list(FIELDS) + ["seed"]
    assert np.all(table.columns["learning_rate"] == 0.2)
    assert table.columns["d"].dtype == np.int64
    assert table.columns["fraction"].dtype == np.float64
    assert table.columns["bias"].dtype == np.bool_
    row = table.row(13)
    assert (row["d"], row["init"], row["fraction"], row["seed"]) == (80, "normal", 0.0, 3)
    assert type(row["d"]) is int and type(row["fraction"]) is float
    assert type(row["bias"]) is bool and row["bias"] is False
    sub = table.take(np.array([1, 13]))
    assert list(sub.columns["seed"]) == [3, 3] and list(sub.columns["d"]) == [40, 80]


def test_fixed_sweep_has_one_run_per_seed(tmp_path):
    sweep = load_text(tmp_path, "[sweep]\nseeds = 4")
    assert sweep.axes == []
    assert list(sweep.run_table().columns["seed"]) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Presets and defaults.

DEFAULTS = {
    "output_scale": "mean", "patch_pool": "sum", "init": "normal", "init_std": 0.01,
    "bias": False, "noise_orthogonal": False, "label_flip": 0.0, "signal_support": 1,
    "mask": "bernoulli", "nested": True, "optimizer": "gd", "dtype": "float32",
    "matmul_precision": "float32", "formulation": "auto",
}

KOU2023 = {
    "activation_power": 1.0, "bias": True, "init": "uniform_fan_in", "output_scale": "sum",
    "patch_pool": "mean", "label_flip": 0.1, "learning_rate": 0.1, "width": 10, "n": 20,
    "n_test": 1000, "steps": 100,
}


def fixed_values(sweep):
    return {k: v[0] for k, v in sweep.values.items() if len(v) == 1}


def test_defaults_without_preset(tmp_path):
    sweep = load_text(tmp_path, "", name="plain.toml")
    values = fixed_values(sweep)
    assert {k: values[k] for k in DEFAULTS} == DEFAULTS
    assert values == {k: f.default for k, f in FIELDS.items()}
    assert sweep.preset is None and sweep.name == "plain" and sweep.seeds == (0,)


def test_preset_cao2022(tmp_path):
    values = fixed_values(load_text(tmp_path, 'preset = "cao2022"'))
    assert values["activation_power"] == 3.0 and values["noise_orthogonal"] is True
    others = {k: v for k, v in values.items() if k not in ("activation_power",
                                                              "noise_orthogonal")}
    assert others == {k: f.default for k, f in FIELDS.items() if k in others}


def test_preset_kou2023(tmp_path):
    sweep = load_text(tmp_path, 'name = "k"\npreset = "kou2023"')
    values = fixed_values(sweep)
    assert {k: values[k] for k in KOU2023} == KOU2023
    assert sweep.preset == "kou2023" and sweep.name == "k"
    untouched = set(FIELDS) - set(KOU2023)
    assert {k: values[k] for k in untouched} == {k: FIELDS[k].default for k in untouched}


def test_file_overrides_preset(tmp_path):
    sweep = load_text(tmp_path, """
        preset = "kou2023"
        [model]
        width = 7
        bias = false
        [train]
        learning_rate = [0.05, 0.2]
    """)
    values = fixed_values(sweep)
    assert values["width"] == 7 and values["bias"] is False
    assert sweep.values["learning_rate"] == (0.05, 0.2)
    assert values["init"] == "uniform_fan_in" and values["n"] == 20  # still from the preset


# ---------------------------------------------------------------------------------------------
# Round trip through to_toml.

ROUND_TRIP = """
name = "round-trip"
preset = "kou2023"
[data]
d = [40, 80]
signal_norm = {start = 0.5, stop = 8, num = 4, scale = "log"}
noise_orthogonal = [true, false]
[model]
init = ["normal", "uniform_fan_in"]
init_std = 1e-5
[prune]
fraction = {start = 0.5, stop = 0.99, num = 3, scale = "log1m"}
mask = "exact"
[train]
optimizer = ["adam", "gd"]
steps = 30
dtype = "float64"
[sweep]
seeds = [9, 4]
"""


def test_to_toml_round_trip(tmp_path):
    sweep = load_text(tmp_path, ROUND_TRIP)
    text = sweep.to_toml()
    again = load_text(tmp_path, text, name="again.toml")
    assert again == sweep
    assert again.values == sweep.values and again.seeds == (9, 4)
    assert again.name == "round-trip" and again.preset == "kou2023"
    assert again.differences(sweep) == []
    assert again.to_toml() == text
    assert 'optimizer = ["adam", "gd"]' in text and "init_std = 1e-05" in text


def test_to_toml_round_trip_without_preset_and_with_odd_name(tmp_path):
    name = 'a "quoted" \\ name\twith é, 雪 and a\nnewline\x7f'
    sweep = sweep_from_dict({"name": name, "sweep": {"seeds": 2}})
    again = load_text(tmp_path, sweep.to_toml())
    assert again == sweep and again.name == name and again.preset is None
    assert again.seeds == (0, 1)


def test_differences(tmp_path):
    a = load_text(tmp_path, "[prune]\nfraction = [0, 0.5]")
    b = load_text(tmp_path, 'name = "other"\n[prune]\nfraction = [0, 0.6]\n[sweep]\n'
                            'seeds = 2')
    assert b.differences(a) == ["fraction", "seeds", "name"]


def test_to_dict_holds_every_field():
    sweep = sweep_from_dict({"prune": {"fraction": [0.0, 0.5]}, "sweep": {"seeds": 2}})
    table = sweep.to_dict()
    assert table["prune"]["fraction"] == [0.0, 0.5] and table["sweep"] == {"seeds": [0, 1]}
    assert sorted(k for s in config.SECTIONS[:-1] for k in table[s]) == sorted(FIELDS)
