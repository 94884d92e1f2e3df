"""Data start-up at the sizes of the large face sets: RecordDataset's index before and after the index
cache, and the sampler per epoch, at 1 M, MS1MV2, Glint360K and WebFace42M sizes.

Each size gets a sparse set in `--folder`: a `train.idx` with the real entry count (header record, every
image, one identity record per class) whose image keys all point at one real 112x112 JPEG record, placed
100 GB into a sparse `train.rec` so the offsets have the digits of a real file (the .idx then has about
the real size: 924 MiB at WebFace42M); the header and identity records are real. No `property` file, so
every size opens on the header's counts. Then, each in a fresh process:

- before: `bench.index_baseline.IndexAsBefore`, the index start-up of the earlier RecordDataset (text
  parse, five int64 arrays, a second read of train.idx for the fingerprint);
- first: `RecordDataset` + `data_identity` with no cache yet (parses the text and writes train.idx.cache);
- later: two processes opening at once with the cache in place, as two ranks of a node; each then reads
  every image key and offset (an epoch's worth of lookups) and, while both hold the mapping, reads its
  /proc/self/smaps_rollup.

Memory: peak = highest resident set above the process's level before opening (sampled every 2 ms);
kept = growth of its private memory (Private_Clean + Private_Dirty of smaps_rollup) after opening;
shared = growth of Shared_Clean (the page-cache copy the ranks share, counted once per node). Timings run
on a warm page cache (the files were just written). The sampler columns are `bench.bench_sampler`'s
measure_sampler (world size 1, batch 512, in a process of its own): the Python-list sampler before
issue 22 ("old") against DistributedResumableSampler ("new"); the JSON line also has the intermediate
torch.randperm sampler ("randperm").

    python -m bench.bench_scale                                  # all four sizes (a few GB of disk)
    python -m bench.bench_scale --sizes 1000000 --folder /tmp/i22b/scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_pack import pack_bookkeeping_bytes_per_image, shuffle_bookkeeping_bytes_per_image
from bench.bench_sampler import _PeakResident, measure_sampler
from utils.opencv import cv2
from utils.record_index import beside_cache_path
from utils.recordio import MAGIC, IRHeader, encode_record, pack

# images: identities (1 M: about 50 images per identity; the others as released)
SIZES = {1_000_000: 20_000, 5_822_653: 85_742, 17_091_657: 360_232, 42_474_557: 2_059_906}
JPEG_OFFSET = 100 * 10**9  # where the one image record sits in the sparse .rec
_LINES_PER_BLOCK = 1 << 20
_IDENTITY_RECORD = np.dtype([("magic", "<u4"), ("lrec", "<u4"), ("flag", "<u4"), ("label", "<f4"), ("id", "<u8"),
                             ("id2", "<u8"), ("start", "<f4"), ("end", "<f4")])  # one chunk, 40 bytes


def _face_jpeg() -> bytes:
    ramp = np.linspace(0, 255, 112, dtype=np.float32)
    image = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2,
                      np.full((112, 112), 128.0)], axis=-1)  # [112, 112, 3]
    return cv2.imencode(".jpg", image.astype(np.uint8))[1].tobytes()


def _identity_records(first_image: np.ndarray, end_image: np.ndarray) -> np.ndarray:
    """The identity records [num_classes] (label [first image key, end key) as float32, as pack_rec writes)."""
    records = np.zeros(len(first_image), dtype=_IDENTITY_RECORD)
    records["magic"], records["lrec"], records["flag"] = MAGIC, 32, 2
    records["start"], records["end"] = first_image, end_image
    return records


def write_sparse_set(folder: Path, num_images: int, num_classes: int) -> None:
    """train.rec / train.idx of `num_images` images and `num_classes` identities (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    first_identity = num_images + 1
    bounds = 1 + np.arange(num_classes + 1, dtype=np.int64) * num_images // num_classes  # [C + 1] image keys
    identities = _identity_records(bounds[:-1], bounds[1:])
    expected = encode_record(pack(IRHeader(2, (float(bounds[0]), float(bounds[1])), 0, 0)))
    assert identities[:1].tobytes() == expected  # the vectorised records are what the writer writes
    image_record = encode_record(pack(IRHeader(0, 0.0, 1, 0), _face_jpeg()))
    identity_offset = JPEG_OFFSET + len(image_record)
    with open(folder / "train.rec", "wb") as rec:
        rec.write(encode_record(pack(IRHeader(2, (first_identity, first_identity + num_classes), 0, 0))))
        rec.seek(JPEG_OFFSET)  # a hole: no disk used
        rec.write(image_record)
        rec.write(identities.tobytes())
    with open(folder / "train.idx", "w", encoding="ascii") as idx:
        idx.write("0\t0\n")
        image_line_end = f"\t{JPEG_OFFSET}\n"
        for start in range(1, first_identity, _LINES_PER_BLOCK):
            idx.write(image_line_end.join(map(str, range(start, min(start + _LINES_PER_BLOCK, first_identity)))))
            idx.write(image_line_end)
        keys = range(first_identity, first_identity + num_classes)
        offsets = range(identity_offset, identity_offset + 40 * num_classes, 40)
        idx.write("".join(map("{}\t{}\n".format, keys, offsets)))


def _rollup() -> dict[str, int]:
    """Bytes of this process's /proc/self/smaps_rollup fields."""
    fields = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields


def _memory_growth(before: dict[str, int]) -> dict[str, int]:
    after = _rollup()
    private = ("Private_Clean", "Private_Dirty")
    return {"kept_private": sum(after[k] for k in private) - sum(before[k] for k in private),
            "kept_anonymous": after["Anonymous"] - before["Anonymous"],
            "shared": after["Shared_Clean"] - before["Shared_Clean"]}


def _wait_for(folder: Path, prefix: str, count: int) -> None:
    while len(list(folder.glob(f"{prefix}*"))) < count:
        time.sleep(0.01)


def _child(mode: str, root: Path, sync: Path | None, peers: int) -> dict:
    """One opening in this process; `later` ranks meet at files in `sync` (start, touched, measured)."""
    from bench.index_baseline import IndexAsBefore
    from dataset import RecordDataset, data_identity

    if mode == "sampler":
        return measure_sampler(int(root.name.removeprefix("set_")), 1)
    if sync is not None:
        _wait_for(sync, "go", 1)
    before = _rollup()
    with _PeakResident() as peak:
        start = time.perf_counter()
        if mode == "before":
            opened = IndexAsBefore(root)
        else:
            opened = RecordDataset(root)
            data_identity(opened)
        seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak": peak.bytes, "cached": mode != "before" and
              opened.reader.index.cache_path is not None}
    if sync is not None:
        int(opened.image_offsets.sum()) + int(opened.image_keys.sum())  # every page of both arrays
        (sync / f"touched.{os.getpid()}").touch()
        _wait_for(sync, "touched.", peers)
    result.update(_memory_growth(before))
    if sync is not None:
        (sync / f"measured.{os.getpid()}").touch()
        _wait_for(sync, "measured.", peers)
    return result


def _run_children(mode: str, root: Path, peers: int = 1) -> list[dict]:
    sync = root.parent / f"sync_{mode}"
    shutil.rmtree(sync, ignore_errors=True)
    sync.mkdir()
    command = [sys.executable, "-m", "bench.bench_scale", "--child", mode, "--root", str(root),
               "--peers", str(peers)] + (["--sync", str(sync)] if peers > 1 else [])
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(peers)]
    (sync / "go").touch()
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"{mode} child failed ({child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    shutil.rmtree(sync)
    return results


def measure_size(folder: Path, num_images: int, num_classes: int) -> dict:
    root = folder / f"set_{num_images}"
    start = time.perf_counter()
    write_sparse_set(root, num_images, num_classes)
    written = time.perf_counter() - start
    before = _run_children("before", root)[0]
    beside_cache_path(root / "train.idx").unlink(missing_ok=True)
    first = _run_children("first", root)[0]
    later = _run_children("later", root, peers=2)
    sampler = _run_children("sampler", root)[0]  # a fresh process: no heap left over from the openings
    result = {"num_images": num_images, "num_classes": num_classes, "written_s": written,
              "idx_bytes": (root / "train.idx").stat().st_size,
              "cache_bytes": beside_cache_path(root / "train.idx").stat().st_size,
              "before": before, "first": first, "later": later, "sampler": sampler, "loadavg": os.getloadavg()}
    shutil.rmtree(root)
    return result


def _mib(value: float) -> str:
    return f"{value / 2**20:7.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--folder", type=Path, default=Path("/tmp/bench_scale"))
    parser.add_argument("--pack-names", type=int, default=1_000_000,
                        help="names over which pack_rec's bookkeeping per image is measured (0: skip)")
    parser.add_argument("--child", choices=("before", "first", "later", "sampler"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sync", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(_child(args.child, args.root, args.sync, args.peers)))
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    print("index start-up per process (s, MiB) and sampler per epoch at world size 1; later = 2 ranks at once, "
          "kept private per rank after reading every image entry, shared = the page-cache copy both map")
    print(f"{'images':>11} {'ids':>9} | {'idx MiB':>7} {'cache':>7} | before: {'s':>5} {'peak':>7} {'kept':>7} | "
          f"first: {'s':>5} {'peak':>7} {'kept':>7} | later: {'s':>5} {'peak':>7} {'kept':>7} {'shared':>7} | "
          f"sampler old {'s':>5} {'MiB':>7} new {'s':>5} {'MiB':>7} | load")
    for num_images in args.sizes:
        r = measure_size(args.folder, num_images, SIZES.get(num_images, max(1, num_images // 50)))
        b, f, s = r["before"], r["first"], r["sampler"]
        later_s = max(rank["seconds"] for rank in r["later"])
        later_peak = max(rank["peak"] for rank in r["later"])
        later_kept = max(rank["kept_private"] for rank in r["later"])
        later_shared = min(rank["shared"] for rank in r["later"])
        print(f"{num_images:>11,} {r['num_classes']:>9,} | {_mib(r['idx_bytes'])} {_mib(r['cache_bytes'])} | "
              f"before: {b['seconds']:5.1f} {_mib(b['peak'])} {_mib(b['kept_private'])} | "
              f"first: {f['seconds']:5.1f} {_mib(f['peak'])} {_mib(f['kept_private'])} | "
              f"later: {later_s:5.2f} {_mib(later_peak)} {_mib(later_kept)} {_mib(later_shared)} | "
              f"sampler old {s['list']['seconds']:5.1f} {_mib(s['list']['peak_bytes'])} "
              f"new {s['new']['seconds']:5.2f} {_mib(s['new']['peak_bytes'])} | {r['loadavg'][0]:.2f}", flush=True)
        print("  " + json.dumps(r), flush=True)
    if args.pack_names:
        _print_bookkeeping(args.pack_names)


def _print_bookkeeping(num_names: int) -> None:
    """pack_rec's and shuffle_rec's bookkeeping per image (bench/bench_pack.py), which does not depend on the
    set's size: measured over `num_names` synthetic WebFace42M-style names, before and after, with the total
    at each size."""
    print(f"bookkeeping per image over {num_names:,} names (B; before -> after), and at each size (GiB):")
    for tool, measure in (("pack_rec", pack_bookkeeping_bytes_per_image),
                          ("shuffle_rec", shuffle_bookkeeping_bytes_per_image)):
        before, after = measure(num_names, before=True), measure(num_names)
        totals = ", ".join(f"{n / 1e6:.1f} M: {before * n / 2**30:.2f} -> {after * n / 2**30:.2f}" for n in SIZES)
        print(f"  {tool:<12}{before:7.1f} -> {after:5.1f}   {totals}", flush=True)


if __name__ == "__main__":
    main()
