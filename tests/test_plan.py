"""Shape buckets and chunk layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_sweep
from jaxprune import cpu_update, train
from jaxprune.plan import (PAD, PlanError, chunk_from_json, chunk_to_json, group_bytes,
                           padded_sizes, plan_chunks, run_bytes)


def test_padded_sizes_minimise_padded_work_with_few_buckets():
    mapping = padded_sizes([10, 11, 12, 100, 101], max_buckets=2)
    assert mapping == {10: 12, 11: 12, 12: 12, 100: 101, 101: 101}
    assert padded_sizes([5, 5, 7], max_buckets=4) == {5: 5, 7: 7}
    d_values = range(100, 2100, 20)  # 100 values of d
    mapping = padded_sizes(d_values, max_buckets=4)
    assert len(set(mapping.values())) == 4
    assert all(mapping[v] >= v for v in d_values)

    # Optimal: no split of 12 sorted values into 3 contiguous buckets does less padded work.
    values = [3, 4, 9, 10, 11, 30, 31, 50, 52, 53, 90, 91]
    mapping = padded_sizes(values, max_buckets=3)
    best = min(
        sum(max(g) * len(g) for g in (values[:i], values[i:j], values[j:]))
        for i in range(1, 11) for j in range(i + 1, 12))
    assert sum(mapping[v] for v in values) == best


def test_a_sweep_over_100_values_of_d_compiles_four_programs():
    sweep = tiny_sweep(data={"d": {"start": 50, "stop": 2000, "num": 100}},
                       prune={"fraction": 0.5})
    chunks = plan_chunks(sweep.run_table(), memory_budget=2**33)
    assert len({c.static for c in chunks}) == 4
    assert sum(len(c.run_ids) for c in chunks) == 200


def test_chunks_cover_every_run_once_and_respect_the_limits():
    sweep = tiny_sweep(prune={"fraction": [0.0, 0.2, 0.4, 0.6, 0.8]}, sweep={"seeds": 7})
    table = sweep.run_table()
    for max_runs in (None, 1, 3, 4, 10):
        chunks = plan_chunks(table, memory_budget=2**33, max_runs=max_runs)
        ids = np.concatenate([c.run_ids for c in chunks])
        assert sorted(ids) == list(range(len(table)))
        assert len({c.static for c in chunks}) == 1  # one program for the whole sweep
        for c in chunks:
            if max_runs:
                assert c.static.runs <= max(max_runs, c.static.group_size)
            for row in c.runs:  # a row holds runs of one seed
                real = row[row != PAD]
                assert len(set(table.columns["seed"][real])) <= 1


def test_memory_budget_bounds_the_chunk():
    sweep = tiny_sweep(prune={"fraction": [0.0, 0.5]}, sweep={"seeds": 16})
    table = sweep.run_table()
    chunks = plan_chunks(table, memory_budget=2**33)
    per_run = run_bytes(chunks[0].static)
    small = plan_chunks(table, memory_budget=5 * per_run)
    assert len(chunks) == 1 and len(small) > 1
    assert all(c.static.runs * per_run <= 5 * per_run for c in small)


def test_a_budget_below_one_seed_s_runs_cuts_its_runs_and_below_one_run_is_an_error():
    table = tiny_sweep(prune={"fraction": [0.0, 0.2, 0.4, 0.6, 0.8]}, sweep={"seeds": 1}
                       ).run_table()
    (whole,) = plan_chunks(table, memory_budget=2**33)
    per_run, per_seed = run_bytes(whole.static), group_bytes(whole.static)
    chunks = plan_chunks(table, memory_budget=per_seed + 2 * per_run)
    assert sorted(np.concatenate([c.run_ids for c in chunks])) == list(range(5))
    for c in chunks:  # rows of at most 2 runs of the one seed, one row a chunk
        assert c.static.group_size <= 2 and c.static.groups == 1

    with pytest.raises(PlanError, match=r"one run \(d = 40, n = 8, n_test = 64, width = 4\) "
                       r"needs [0-9.]+ KB with its data, more than the memory budget of "
                       r"[0-9.]+ KB"):
        plan_chunks(table, memory_budget=per_seed + per_run - 1)


def test_planning_some_runs_numbers_their_chunks_from_first_index():
    table = tiny_sweep(prune={"fraction": [0.0, 0.2, 0.4]}).run_table()  # 6 runs, 2 seeds
    chunks = plan_chunks(table, memory_budget=2**33, max_runs=2, run_ids=[1, 2, 5],
                         first_index=7)
    assert sorted(np.concatenate([c.run_ids for c in chunks])) == [1, 2, 5]
    assert [c.index for c in chunks] == list(range(7, 7 + len(chunks)))


def test_matmul_precision_reaches_the_program_and_the_plan():
    """The option is part of every chunk's ``Static``; a plan.json written before the option
    existed reads as float32."""
    (chunk,) = plan_chunks(tiny_sweep(train={"matmul_precision": "tensorfloat32"}).run_table(),
                           memory_budget=2**33)
    assert chunk.static.matmul_precision == "tensorfloat32"
    saved = chunk_to_json(chunk)
    assert chunk_from_json(saved).static == chunk.static
    del saved["static"]["matmul_precision"]
    assert chunk_from_json(saved).static.matmul_precision == "float32"


@pytest.mark.parametrize("formulation, kernel", [("auto", True), ("direct", False),
                                                 ("kernel", True)])
def test_formulation_reaches_the_program_and_the_plan(formulation, kernel):
    """The sweep's ``formulation`` is every chunk's; at sizes where the kernel formulation pays
    (n^2 <= 2d, steps >= n) "direct" turns it off, and the planner then counts no Gram
    matrices: 2m k^2 floats a run (k = n + 1), or 2m k (k + 1) / 2 as the CPU's triangles.
    A plan.json written before the option existed reads as "auto"."""
    sweep = tiny_sweep(data={"d": 200, "n": 10}, train={"steps": 40, "eval_every": 20,
                                                         "formulation": formulation})
    (chunk,) = plan_chunks(sweep.run_table(), memory_budget=2**33)
    assert chunk.static.formulation == formulation and chunk.static.kernel_step == kernel
    gram = run_bytes(chunk.static) - run_bytes(dataclasses.replace(chunk.static,
                                                                  formulation="direct"))
    m, n = 4, 10
    k = n + 1  # the noise and the support's indicator
    assert gram == (2 * m * (k * (k + 1) // 2 if cpu_update.gram_triangles() else k * k) * 4
                    if kernel else 0)
    saved = chunk_to_json(chunk)
    del saved["static"]["formulation"]
    assert chunk_from_json(saved).static.formulation == "auto"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_group_bytes_are_one_seeds_arrays_and_the_accelerator_steps_noise_copy(dtype):
    """What the planner counts a seed is what ``make_groups`` returns for it plus the
    ``[Z; 1_S]`` that ``train._support_noise`` builds from it (read off the arrays' shapes)."""
    (chunk,) = plan_chunks(tiny_sweep(data={"d": 37, "n": 11, "n_test": 13},
                                      train={"dtype": dtype}).run_table(), memory_budget=2**33)
    one_seed = dataclasses.replace(chunk.static, groups=1)
    groups = jax.eval_shape(lambda s: train.make_groups(s, one_seed), jnp.zeros(1, jnp.uint32))
    noise_copy = jax.eval_shape(lambda z: train._support_noise(z, one_seed), groups.train.noise)
    arrays = [*jax.tree.leaves(groups), noise_copy]
    assert group_bytes(one_seed) == sum(x.size * x.dtype.itemsize for x in arrays)


@pytest.mark.parametrize("triangles", [True, False])
def test_a_run_s_bytes_count_its_gram_matrices_as_they_are_kept(monkeypatch, triangles):
    """Upper triangles where the CPU's native products read them, else full, of the noise and
    the support's indicator (n + 1 rows): a run's share of what ``train._gram`` builds."""
    monkeypatch.setattr(cpu_update, "gram_triangles", lambda dtype: triangles)
    static = dataclasses.replace(plan_chunks(tiny_sweep().run_table(), 1 << 30)[0].static,
                                 formulation="kernel")
    n, m, f = static.n, static.width, static.float_dtype.itemsize
    gram = run_bytes(static) - run_bytes(dataclasses.replace(static, formulation="direct"))
    k = n + 1
    assert gram == 2 * m * (k * (k + 1) // 2 if triangles else k * k) * f
    S, F, d = static.groups, static.group_size * 2 * m, static.d
    built = jax.eval_shape(
        lambda mask, z: train._gram(mask, z, static, train.BLOCK_BYTES, packed=triangles),
        jax.ShapeDtypeStruct((S, F, d), jnp.bool_),
        jax.ShapeDtypeStruct((S, n, d), static.float_dtype))
    assert static.runs * gram == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(built))
