import itertools

import numpy as np
import pytest
import torch

from diffmamba.train.batches import (BatchLayout, DataPosition, StepIndexSampler, collate_rows, epoch_permutation,
                               validation_batches)


def steps_of(sampler: StepIndexSampler, steps: int) -> list[list[list[int]]]:
    it = iter(sampler)
    a = sampler.layout.accumulation_steps
    return [[next(it) for _ in range(a)] for _ in range(steps)]


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert np.array_equal(epoch_permutation(50, 3, 7), epoch_permutation(50, 3, 7))
    assert not np.array_equal(epoch_permutation(50, 3, 7), epoch_permutation(50, 3, 8))
    assert not np.array_equal(epoch_permutation(50, 3, 7), epoch_permutation(50, 4, 7))
    assert sorted(epoch_permutation(50, 3, 7)) == list(range(50))


def test_position_moves_to_the_next_epoch_when_a_batch_no_longer_fits():
    assert DataPosition(0, 8).advanced(8, 25) == DataPosition(0, 16)
    assert DataPosition(0, 16).advanced(8, 25) == DataPosition(1, 0)  # rows 24.. would be short: skipped
    assert DataPosition(0, 8).advanced(8, 24) == DataPosition(0, 16)
    assert DataPosition(0, 16).advanced(8, 24) == DataPosition(1, 0)


def test_processes_and_accumulation_steps_tile_the_global_batch_once():
    layout = BatchLayout(global_batch_size=12, micro_batch_size=3, world_size=2)
    assert layout.accumulation_steps == 2
    per_rank = [steps_of(StepIndexSampler(40, 0, layout, rank, DataPosition()), 5) for rank in range(2)]
    reference = StepIndexSampler(40, 0, layout, 0, DataPosition())
    position = DataPosition()
    for step in range(5):
        rows = [i for rank in range(2) for micro in per_rank[rank][step] for i in micro]
        assert sorted(rows) == sorted(reference.global_batch(position))
        assert len(set(rows)) == 12  # different processes never read the same row of a step
        position = position.advanced(12, 40)


def test_each_epoch_reads_its_permutation_in_order_without_repeats():
    layout = BatchLayout(global_batch_size=8, micro_batch_size=4, world_size=1)
    sampler = StepIndexSampler(20, 1, layout, 0, DataPosition())
    rows = [i for step in steps_of(sampler, 4) for micro in step for i in micro]  # 2 steps per epoch
    assert rows[:16] == epoch_permutation(20, 1, 0).tolist()[:16]
    assert rows[16:] == epoch_permutation(20, 1, 1).tolist()[:16]


def test_starting_from_a_saved_position_continues_the_same_stream():
    layout = BatchLayout(global_batch_size=6, micro_batch_size=3, world_size=1)
    straight = steps_of(StepIndexSampler(17, 5, layout, 0, DataPosition()), 9)
    position = DataPosition()
    for _ in range(4):
        position = position.advanced(6, 17)
    resumed = steps_of(StepIndexSampler(17, 5, layout, 0, position), 5)
    assert resumed == straight[4:]


def test_a_dataset_smaller_than_the_global_batch_is_refused():
    layout = BatchLayout(global_batch_size=8, micro_batch_size=8, world_size=1)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepIndexSampler(3, 0, layout, 0, DataPosition())


def test_validation_rows_are_fixed_and_split_over_processes():
    data = [{"input_ids": torch.full((4,), i), "valid": torch.ones(4, dtype=torch.bool)} for i in range(10)]
    seen = []
    for rank in range(2):
        for batch in validation_batches(data, micro_batch_size=2, num_batches=2, rank=rank, world_size=2):
            assert batch["input_ids"].dtype == torch.long and batch["valid"].dtype == torch.bool
            seen += batch["input_ids"][:, 0].tolist()
    assert sorted(seen) == list(range(8))
    short = list(itertools.chain(*(b["input_ids"][:, 0].tolist() for b in validation_batches(data[:3], 4, 8, 0, 1))))
    assert short == [0, 1, 2]


def test_collate_accepts_lists():
    batch = collate_rows([{"input_ids": [1, 2]}, {"input_ids": [3, 4]}])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 4]] and batch["input_ids"].dtype == torch.long
