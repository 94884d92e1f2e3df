"""Decoding cost per 112x112 JPEG, stacked into a batch as the loader's collate does: the released CHW
decode versus `utils.decode.decode_chw` (what the datasets use) and versus `decode_image` plus a strided
CHW view (why `decode_chw` exists), and the `nvjpeg_ready` check the GPU path adds in the workers; one
process, one thread.

    python -m bench.bench_decode
    python -m bench.bench_decode --num-images 512 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from utils.decode import decode_chw, decode_image, nvjpeg_ready
from utils.opencv import cv2


def released_decode(data: bytes) -> torch.Tensor:
    """The decode before utils.decode: OpenCV BGR -> one NumPy copy into contiguous RGB [3, H, W]."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)[::-1]))


def best_seconds(function, payloads: list[bytes], repeats: int) -> float:
    """Best of `repeats` passes over `payloads`, each followed by the batch stack the collate does."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = [function(data) for data in payloads]
        if isinstance(results[0], torch.Tensor):
            torch.stack(results)  # [B, 3, H, W]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(args.num_images):
        smooth = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (112, 112))
        noisy = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        payloads.append(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    for data in payloads[:8]:
        assert torch.equal(released_decode(data), decode_chw(data))  # same pixels
    released = best_seconds(released_decode, payloads, args.repeats)
    ours = best_seconds(decode_chw, payloads, args.repeats)
    strided = best_seconds(lambda data: torch.from_numpy(decode_image(data)).permute(2, 0, 1), payloads, args.repeats)
    check = best_seconds(nvjpeg_ready, payloads, args.repeats)
    per_image = 1e6 / args.num_images
    print(f"{args.num_images} JPEGs of {np.mean([len(p) for p in payloads]) / 1024:.1f} KiB, best of {args.repeats}")
    print(f"released decode + stack : {released * per_image:8.1f} us/image")
    print(f"decode_chw + stack      : {ours * per_image:8.1f} us/image  (ratio {ours / released:.2f})")
    print(f"HWC + view + stack      : {strided * per_image:8.1f} us/image  (ratio {strided / released:.2f})")
    print(f"nvjpeg_ready check      : {check * per_image:8.1f} us/image  ({check / ours:.1%} of a decode)")


if __name__ == "__main__":
    main()
