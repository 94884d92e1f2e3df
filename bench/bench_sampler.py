"""Per-epoch cost of the training sampler: the earlier Python-list sampler against DistributedResumableSampler.

Both give the same order for a seed (torch.randperm(N) seeded with seed + epoch). The earlier sampler held
the permutation as int64 and this rank's share as a Python list (about 36 B per index); the current one
holds the permutation as int32 and hands out its share in lists of 65,536 indices. Each epoch is drained
to its last index (by a C loop, so the consumer costs nothing); time is wall time, memory the peak resident
set above the level before the epoch (sampled every 2 ms from /proc/self/statm), both in one process,
baseline first, then ours.

    python -m bench.bench_sampler                      # 1 M, 5.8 M (MS1MV2), 17 M (Glint360K), 42.5 M (WebFace42M)
    python -m bench.bench_sampler --sizes 1000000 --world-size 8
"""

from __future__ import annotations

import argparse
import collections
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


def _list_sampler_epoch(num_images: int, rank: int, world_size: int, seed: int, epoch: int):
    """The sampler before issue 22: an int64 permutation and this rank's share as one Python list."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed + epoch))
    order = order[:num_images - num_images % world_size]
    return iter(order[rank::world_size].tolist())


def _array_sampler_epoch(num_images: int, rank: int, world_size: int, seed: int, epoch: int):
    sampler = DistributedResumableSampler(num_images, rank, world_size, seed)
    sampler.set_epoch(epoch)
    return iter(sampler)


def _one_epoch(make_iterator, num_images: int, world_size: int) -> dict:
    with _PeakResident() as memory:
        start = time.perf_counter()
        indices = make_iterator(num_images, 0, world_size, 2048, 1)
        first = next(indices)
        seconds_to_first = time.perf_counter() - start
        collections.deque(indices, maxlen=0)  # drain the epoch in C
        seconds = time.perf_counter() - start
        del indices, first
    return {"seconds": seconds, "seconds_to_first": seconds_to_first, "peak_bytes": memory.bytes}


def measure_sampler(num_images: int, world_size: int) -> dict:
    """Seconds and peak resident bytes of one epoch of rank 0's indices, earlier sampler and ours.

    Returns {"old": {...}, "new": {...}, "ratio_seconds", "ratio_bytes", "loadavg"}, each side with
    `seconds` (whole epoch drained), `seconds_to_first` (until the first index) and `peak_bytes`.
    """
    old = _one_epoch(_list_sampler_epoch, num_images, world_size)
    new = _one_epoch(_array_sampler_epoch, num_images, world_size)
    return {"num_images": num_images, "world_size": world_size, "old": old, "new": new,
            "ratio_seconds": old["seconds"] / new["seconds"],
            "ratio_bytes": old["peak_bytes"] / max(new["peak_bytes"], 1), "loadavg": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--world-size", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"world size {args.world_size}; per epoch of rank 0: seconds (to the first index) and peak resident MiB")
    print(f"{'images':>11} | {'old s':>13} | {'old MiB':>8} | {'new s':>13} | {'new MiB':>8} | "
          "time x | memory x | load")
    for num_images in args.sizes:
        r = measure_sampler(num_images, args.world_size)
        old, new = r["old"], r["new"]
        print(f"{num_images:>11,} | {old['seconds']:5.2f} ({old['seconds_to_first']:5.2f}) | "
              f"{old['peak_bytes'] / 2**20:8.0f} | {new['seconds']:5.2f} ({new['seconds_to_first']:5.2f}) | "
              f"{new['peak_bytes'] / 2**20:8.0f} | {r['ratio_seconds']:6.1f} | {r['ratio_bytes']:8.1f} | "
              f"{r['loadavg'][0]:.2f}")


if __name__ == "__main__":
    main()
