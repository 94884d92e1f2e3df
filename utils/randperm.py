"""torch.randperm's order computed a prefix at a time: the training sampler's permutation of an epoch.

On the CPU, `torch.randperm(n, generator=torch.Generator().manual_seed(seed))` for n under 2^32 // 20
(214,748,364) is a forward Fisher–Yates (ATen's `randperm_cpu`): step i = 0 … n - 2 swaps positions i and
i + r_i mod (n - i), where r_i is the i-th 32-bit output of an mt19937 seeded with the seed's low 32 bits.
Position i is final after step i, so an epoch can hand out its first images long before the last swap,
and the rest of the work is spread over the epoch. NumPy's legacy `RandomState` seeds the same mt19937
the same way and gives one output per value of a full-range uint32 `randint`; the swaps run compiled
(Numba), with a 32-bit remainder where torch takes a 64-bit one. From 2^32 // 20 images on, torch draws
64-bit values in another loop, and `torch.randperm` itself is called.

Numba is imported and the swaps compiled on the first shuffle of a process, not on import (DataLoader
workers, which never shuffle, do not load it): about 60 MiB and 0.3 s once per process (0.4 s when its
machine code is not cached yet; where no cache folder is writable, Numba's own or `NUMBA_CACHE_DIR`, it is
compiled in every process).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SWAP_LOOP_LIMIT = (2**32 - 1) // 20  # randperm_cpu's "small n" bound: the swap loop below is its order under it
_DRAWS_PER_CALL = 1 << 16  # 256 KiB of draws and as many of swap partners at a time, in cache


def _fisher_yates_steps(order: np.ndarray, draws: np.ndarray, first: int, partners: np.ndarray) -> None:
    """Steps first … first + len(draws) - 1 in place: step i swaps order[i] and order[i + draw mod (n - i)].

    The partners [len(draws)] (uint32 scratch) are computed first, apart from the swaps: the divisions then
    overlap, and the swaps' cache misses do not wait on them (about 30 % faster than one loop here).
    Run compiled (`_compiled_steps`); all arithmetic stays in unsigned 32 bits, below n < 2^32.
    """
    n = np.uint32(order.shape[0])
    for k in range(draws.shape[0]):
        i = np.uint32(first + k)
        partners[k] = i + draws[k] % (n - i)
    for k in range(draws.shape[0]):
        i = first + k
        j = partners[k]
        order[i], order[j] = order[j], order[i]


@functools.cache
def _compiled_steps():
    """`_fisher_yates_steps` compiled by Numba (imported here, on first use), its machine code cached on disk
    where Numba finds a writable cache folder."""
    import numba

    try:
        return numba.njit(nogil=True, cache=True)(_fisher_yates_steps)
    except RuntimeError:  # "no locator available": nowhere to cache; compile in this process only
        return numba.njit(nogil=True)(_fisher_yates_steps)


class TorchRandperm:
    """`torch.randperm(n, generator=torch.Generator().manual_seed(seed))` on the CPU, value for value, as
    an int32 NumPy array (int64 from 2^31 images) that becomes final from the front.

    `advance(upto)` returns the whole array [n] with its first `upto` entries final; the entries after
    them are the shuffle's working state. Memory: the array (4 B per image) and 512 KiB of scratch.
    """

    def __init__(self, n: int, seed: int):
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if not -2**63 <= seed < 2**64:
            raise ValueError(f"seed {seed} is outside what torch.Generator.manual_seed takes, [-2^63, 2^64)")
        self.n = n
        if n >= SWAP_LOOP_LIMIT:
            dtype = torch.int32 if n < 2**31 else torch.int64
            generator = torch.Generator().manual_seed(seed)
            self.order = torch.randperm(n, generator=generator, dtype=dtype).numpy()
            self._steps_done = max(n - 1, 0)
        else:
            # torch's allocation (no transparent huge pages): first touched in a steady 0.05 s at 42.5 M images,
            # where NumPy's huge pages took 0.02-0.4 s, as the kernel had them or first compacted memory
            self.order = torch.arange(n, dtype=torch.int32).numpy()
            self._draws = np.random.RandomState(seed & 0xFFFFFFFF)
            self._partners = np.empty(min(_DRAWS_PER_CALL, n), dtype=np.uint32)
            self._steps_done = 0

    @property
    def final(self) -> int:
        """How many leading entries are final (after step n - 2 the last one is too)."""
        return self.n if self._steps_done >= self.n - 1 else self._steps_done

    def advance(self, upto: int) -> np.ndarray:
        """Run the swaps until the first min(upto, n) entries are final; returns `order` [n]."""
        last_step = min(upto, self.n - 1)
        while self._steps_done < last_step:
            count = min(len(self._partners), last_step - self._steps_done)
            draws = self._draws.randint(0, 2**32, size=count, dtype=np.uint32)
            _compiled_steps()(self.order, draws, self._steps_done, self._partners)
            self._steps_done += count
        return self.order


def torch_randperm(n: int, seed: int) -> np.ndarray:
    """The whole of `TorchRandperm(n, seed)`: torch.randperm's order for this seed [n]."""
    return TorchRandperm(n, seed).advance(n)
