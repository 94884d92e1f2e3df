"""torch.randperm's order computed a prefix at a time (utils/randperm.py), against torch.randperm itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dataset
from dataset import DistributedResumableSampler
from utils import randperm
from utils.randperm import TorchRandperm, torch_randperm


def _torch(n: int, seed: int) -> np.ndarray:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.mark.parametrize("seed", [0, 7, 2048 + 3, 2**32 + 5, 2**64 - 1, -3])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000, 65_537])
def test_the_order_is_torch_randperms_for_the_seed(n, seed):
    """Seeds past 32 bits and negative ones included: torch's mt19937 takes the seed's low 32 bits."""
    order = torch_randperm(n, seed)
    assert order.dtype == np.int32 and np.array_equal(order, _torch(n, seed))


def test_the_draws_continue_across_calls_of_the_compiled_steps(monkeypatch):
    monkeypatch.setattr(randperm, "_DRAWS_PER_CALL", 7)  # 1,000 images: 143 calls of at most 7 swaps
    assert np.array_equal(torch_randperm(1000, 11), _torch(1000, 11))


def test_a_real_size_order_spans_several_calls():
    n = randperm._DRAWS_PER_CALL * 40 + 12_345  # 41 calls of the compiled steps at the real draw count
    assert np.array_equal(torch_randperm(n, 5), _torch(n, 5))


def test_advance_makes_a_prefix_final_and_later_calls_only_extend_it():
    expected = _torch(5000, 9)
    shuffle = TorchRandperm(5000, 9)
    assert shuffle.final == 0
    for upto in (1, 40, 40, 2999, 4999, 7000):
        order = shuffle.advance(upto)
        assert shuffle.final == (upto if upto < 4999 else 5000)  # the last swap settles the last two
        assert np.array_equal(order[:upto], expected[:upto])
    assert np.array_equal(order, expected)


def test_from_torchs_64_bit_loop_on_torch_randperm_is_used(monkeypatch):
    """At 2^32 // 20 images torch draws 64-bit values in another loop (checked against torch once, by hand:
    214,748,363 images give the swap loop's order, 214,748,364 do not); from there torch.randperm is called."""
    assert randperm.SWAP_LOOP_LIMIT == 214_748_364
    calls = []

    def recorded(*args):
        calls.append(args[2])
        return compiled(*args)

    compiled = randperm._compiled_steps()
    monkeypatch.setattr(randperm, "SWAP_LOOP_LIMIT", 100)
    monkeypatch.setattr(randperm, "_compiled_steps", lambda: recorded)
    for n in (100, 150):  # at the bound and past it
        shuffle = TorchRandperm(n, 4)
        assert shuffle.final == n and np.array_equal(shuffle.advance(1), _torch(n, 4)) and not calls
    assert np.array_equal(torch_randperm(99, 4), _torch(99, 4)) and calls == [0]  # under it: the swap loop


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1])
def test_a_seed_torch_refuses_is_refused(seed):
    with pytest.raises(ValueError):
        torch.Generator().manual_seed(seed)
    with pytest.raises(ValueError, match="outside what torch.Generator.manual_seed takes"):
        TorchRandperm(10, seed)


def test_the_sampler_hands_out_its_first_batch_before_the_epoch_is_shuffled(monkeypatch):
    shuffles = []

    class Recorded(TorchRandperm):
        def __init__(self, n, seed):
            super().__init__(n, seed)
            shuffles.append(self)

    monkeypatch.setattr(dataset, "TorchRandperm", Recorded)
    sampler = DistributedResumableSampler(1_000_000, 1, 2, seed=3, batch_size=64, micro_batches=2)
    sampler.set_epoch(2)
    batches = iter(sampler)
    first = next(batches)
    assert len(shuffles) == 1 and shuffles[0].final < 1_000_000 // 10  # one chunk of steps, not the epoch
    expected = _torch(1_000_000, 3 + 2)
    # image b of micro-batch m of rank 1 in step s: virtual rank m * 2 + 1 of 4, image s * 256 + b * 4 + v
    steps, micro, image = np.ogrid[:1_000_000 // 256, :2, :64]
    positions = (steps * 256 + image * 4 + micro * 2 + 1).reshape(-1)  # [S * M * b] in hand-out order
    assert np.array_equal(first, expected[positions[:64]])
    assert np.array_equal(np.concatenate([first, *batches]), expected[positions])
