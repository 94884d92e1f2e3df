"""The benchmark suite in one process against the separate CLIs run one after another, on the demo data.

Baseline: `python -m eval.verification --bins <every .bin>` then `python eval_ijbc.py` (the tools a
researcher had before the suite), each its own process as a user runs them. Ours: `python -m eval.suite
--only bin,ijbc` over the same data (one process, the model loaded once), then the same again with a warm
--features-cache (a second run with another protocol option: no network). Also the whole suite (every
benchmark of the demo data, which the separate CLIs cannot run). Wall time of each process, imports
included; a random vit_nano (the speed does not depend on the weights).

    python -m bench.bench_suite --data demo_data            # made with python -m tools.make_demo_data
    python -m bench.bench_suite                             # writes a small demo set into a temporary folder
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from backbones import get_model


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="demo data folder (default: generate a small one)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = Path(args.data) if args.data else scratch / "demo"
        if not args.data:
            subprocess.run([sys.executable, "-m", "tools.make_demo_data", "--out", str(data), "--num-train-ids", "4",
                            "--images-per-id", "2", "--workers", str(args.workers)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        torch.manual_seed(0)
        model = scratch / "nano.pt"
        torch.save(get_model("vit_nano").state_dict(), model)
        common = ["--model-prefix", str(model), "--network", "vit_nano", "--device", "cpu"]
        bins = sorted(str(p) for p in data.glob("*.bin"))
        separate = timed([sys.executable, "-m", "eval.verification", *common, "--bins", *bins], env)
        separate += timed([sys.executable, "eval_ijbc.py", *common, "--image-path", str(data / "IJBC"),
                           "--result-dir", str(scratch / "cli"), "--job", "ijbc", "--target", "IJBC",
                           "--num-workers", str(args.workers)], env)
        suite = [sys.executable, "-m", "eval.suite", *common, "--data-root", str(data),
                 "--num-workers", str(args.workers)]
        ours = timed([*suite, "--only", "bin,ijbc", "--result-dir", str(scratch / "s1"),
                      "--features-cache", str(scratch / "cache")], env)
        cached = timed([*suite, "--only", "bin,ijbc", "--result-dir", str(scratch / "s2"),
                        "--features-cache", str(scratch / "cache"), "--no-norm-score"], env)
        whole = timed([*suite, "--result-dir", str(scratch / "s3")], env)
    load = os.getloadavg()
    print(f"data {data}: .bin sets {len(bins)}, IJBC; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          f"{' (under load, not quotable)' if load[0] > 1.5 else ''}")
    print(f"separate CLIs (eval.verification, then eval_ijbc.py): {separate:.1f} s")
    print(f"suite --only bin,ijbc:                                {ours:.1f} s  ({separate / ours:.2f}x)")
    print(f"suite again, warm --features-cache, --no-norm-score:   {cached:.1f} s  ({separate / cached:.2f}x)")
    print(f"whole suite (every benchmark of the demo data):       {whole:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
