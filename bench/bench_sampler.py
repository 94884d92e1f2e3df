"""Per-epoch cost of the training sampler: the two earlier samplers against DistributedResumableSampler.

All three give the same order for a seed (torch.randperm(N) seeded with seed + epoch). "list" is the
sampler before issue 22 (an int64 permutation, this rank's share as one Python list, about 36 B per
index); "randperm" the next one (torch.randperm as int32, the share handed out in lists of 65,536 Python
ints); "new" the current one (torch.randperm's swaps run compiled a chunk at a time as the epoch goes,
this rank's micro-batches handed out as index arrays of --batch-size). Each epoch is drained to its end
(by a C loop, so the consumer costs nothing; the Python ints of the first two would still have to be
grouped into batches by the DataLoader, which is not counted). Time is wall time, to the first item and
to the end, for a side's first epoch in the process (whose memory is touched for the first time: the
kernel zeroes, and may first compact, the pages) and for the next epoch; memory the peak resident set
above the level before the first epoch (sampled every 2 ms from /proc/self/statm). One process, the
sides in turn; the compiled swaps are loaded once before timing.

    python -m bench.bench_sampler                      # 1 M, 5.8 M (MS1MV2), 17 M (Glint360K), 42.5 M (WebFace42M)
    python -m bench.bench_sampler --sizes 1000000 --world-size 8
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import itertools
import os
import threading
import time

import torch

from dataset import DistributedResumableSampler

SIZES = (1_000_000, 5_822_653, 17_091_657, 42_474_557)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class _PeakResident:
    """Peak resident bytes above the level at entry, sampled by a thread while the block runs."""

    def __enter__(self):
        self.start = self.peak = _resident_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, _resident_bytes())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())
        self.bytes = self.peak - self.start


def _list_sampler_epoch(num_images: int, rank: int, world_size: int, seed: int, epoch: int, batch_size: int):
    """The sampler before issue 22: an int64 permutation and this rank's share as one Python list."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed + epoch))
    order = order[:num_images - num_images % world_size]
    return iter(order[rank::world_size].tolist())


def _randperm_sampler_epoch(num_images: int, rank: int, world_size: int, seed: int, epoch: int, batch_size: int):
    """The next sampler: torch.randperm as int32, this rank's share in lists of 65,536 Python ints."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed + epoch), dtype=torch.int32)
    whole = len(order) - len(order) % (batch_size * world_size)
    mine = order[:whole].view(-1, batch_size, world_size)[..., rank].reshape(-1)
    return itertools.chain.from_iterable(mine[first:first + 2**16].tolist() for first in range(0, len(mine), 2**16))


def _array_sampler_epoch(num_images: int, rank: int, world_size: int, seed: int, epoch: int, batch_size: int):
    sampler = DistributedResumableSampler(num_images, rank, world_size, seed, batch_size=batch_size)
    sampler.set_epoch(epoch)
    return iter(sampler)


SIDES = {"list": _list_sampler_epoch, "randperm": _randperm_sampler_epoch, "new": _array_sampler_epoch}


def _fresh_pages_for_large_arrays() -> None:
    """Pin glibc's mmap threshold at 1 MiB, so every side's large arrays are new pages returned on free:
    with the default dynamic threshold a later side reuses heap an earlier side freed and shows no growth."""
    m_mmap_threshold = -3
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(m_mmap_threshold, 2**20)


def _one_epoch(make_iterator, num_images: int, world_size: int, batch_size: int, epoch: int) -> dict:
    with _PeakResident() as memory:
        start = time.perf_counter()
        items = make_iterator(num_images, 0, world_size, 2048, epoch, batch_size)
        first = next(items)
        seconds_to_first = time.perf_counter() - start
        collections.deque(items, maxlen=0)  # drain the epoch in C
        seconds = time.perf_counter() - start
        del items, first
    return {"seconds": seconds, "seconds_to_first": seconds_to_first, "peak_bytes": memory.bytes}


def _two_epochs(make_iterator, num_images: int, world_size: int, batch_size: int) -> dict:
    """The side's first epoch in this process (its memory touched for the first time) and the next one."""
    first = _one_epoch(make_iterator, num_images, world_size, batch_size, 1)
    later = _one_epoch(make_iterator, num_images, world_size, batch_size, 2)
    return {**first, "later_seconds": later["seconds"], "later_seconds_to_first": later["seconds_to_first"]}


def measure_sampler(num_images: int, world_size: int, batch_size: int = 512) -> dict:
    """Seconds and peak resident bytes of an epoch of rank 0's indices, the earlier samplers and ours.

    Returns {"list": {...}, "randperm": {...}, "new": {...}, "ratio_seconds", "ratio_bytes", "loadavg"},
    each side with `seconds` (its first epoch drained), `seconds_to_first` (until its first item),
    `peak_bytes`, and `later_seconds` / `later_seconds_to_first` of the epoch after; the ratios are "list"
    over "new", first epochs.
    """
    _fresh_pages_for_large_arrays()
    collections.deque(_array_sampler_epoch(2 * batch_size, 0, 1, 0, 0, batch_size), maxlen=0)  # load the swaps
    sides = {name: _two_epochs(side, num_images, world_size, batch_size) for name, side in SIDES.items()}
    return {"num_images": num_images, "world_size": world_size, "batch_size": batch_size, **sides,
            "ratio_seconds": sides["list"]["seconds"] / sides["new"]["seconds"],
            "ratio_bytes": sides["list"]["peak_bytes"] / max(sides["new"]["peak_bytes"], 1),
            "loadavg": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512, help="images per micro-batch (per GPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"world size {args.world_size}, batch {args.batch_size}; per epoch of rank 0: seconds to the end "
          "(to the first item) of the side's first epoch in the process, of the next one, and peak resident MiB")
    print(f"{'images':>11} | " + " | ".join(f"{name:>8} first s {'later s':>15} {'MiB':>5}" for name in SIDES)
          + " | time x | memory x | load")
    for num_images in args.sizes:
        r = measure_sampler(num_images, args.world_size, args.batch_size)
        cells = [f"{r[n]['seconds']:5.2f} ({r[n]['seconds_to_first']:4.2f}) {r[n]['later_seconds']:5.2f} "
                 f"({r[n]['later_seconds_to_first']:4.2f}) {r[n]['peak_bytes'] / 2**20:5.0f}" for n in SIDES]
        print(f"{num_images:>11,} | " + " | ".join(cells)
              + f" | {r['ratio_seconds']:6.1f} | {r['ratio_bytes']:8.1f} | {r['loadavg'][0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
