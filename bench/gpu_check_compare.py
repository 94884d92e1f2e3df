"""The comparisons of bench/gpu_check.sh: two training checkpoints tensor by tensor, two IJB evaluations.

    python -m bench.gpu_check_compare weights RESUMED/checkpoints/step_50 UNINTERRUPTED/checkpoints/step_50
    python -m bench.gpu_check_compare tables RESULTS/cpu_fp32 RESULTS/gpu_fp16 --target IJBC --tolerance 1.0

`weights` reads both checkpoint folders (common.pt and every rank_<r>.pt), prints for each saved group
(backbone, optimizers, class centres, random states) how many tensors differ and by how much at most, and
ends with `equal` (every tensor bitwise the same, same step) or `differ`; exit status 1 when they differ.
`tables` reads two `eval_ijbc.py` job folders and prints both TAR@FAR rows, their difference, the largest
pair-score difference and the lowest cosine similarity between the two runs' image features; exit status 1
when a TAR differs by more than --tolerance percentage points.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError, entry_point


def _tensors(value, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts, lists and tuples, with a dotted name."""
    if torch.is_tensor(value):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{name}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{name}.{index}")


def _load_checkpoint(folder: Path) -> dict[str, dict]:
    """{file name: its contents} for common.pt and the rank files of one checkpoint folder."""
    files = sorted(folder.glob("rank_*.pt"))
    if not (folder / "common.pt").is_file() or not files:
        raise UserError(f"'{folder}' is not a complete checkpoint folder (common.pt and rank_<r>.pt); pass a "
                        "<output>/checkpoints/step_<N> folder.")
    return {path.name: torch.load(path, map_location="cpu", weights_only=True)
            for path in [folder / "common.pt", *files]}


def compare_weights(folder_a: Path, folder_b: Path) -> bool:
    """Print the differences between two checkpoints group by group; True when they are bitwise equal."""
    saved_a, saved_b = _load_checkpoint(folder_a), _load_checkpoint(folder_b)
    if saved_a.keys() != saved_b.keys():
        raise UserError(f"'{folder_a}' and '{folder_b}' were saved by different numbers of ranks.")
    print(f"A: {folder_a}\nB: {folder_b}")
    print(f"{'group':<34}{'tensors':>8}{'differ':>8}{'max |A-B|':>12}")
    equal = saved_a["common.pt"]["step"] == saved_b["common.pt"]["step"]
    for file_name, contents in saved_a.items():
        for group, value in contents.items():
            pairs = dict(_tensors(saved_b[file_name][group], group))
            tensors = list(_tensors(value, group))
            if not tensors:
                continue
            differing, largest = 0, 0.0
            for name, tensor in tensors:
                other = pairs.get(name)
                if other is None or other.shape != tensor.shape or not torch.equal(tensor, other):
                    differing += 1
                    if other is not None and other.shape == tensor.shape:
                        largest = max(largest, (tensor.double() - other.double()).abs().max().item())
            equal = equal and differing == 0 and len(pairs) == len(tensors)
            print(f"{file_name + ' ' + group:<34}{len(tensors):>8}{differing:>8}{largest:>12.3e}")
    steps = saved_a["common.pt"]["step"], saved_b["common.pt"]["step"]
    print(f"{'equal' if equal else 'differ'}: steps {steps[0]} and {steps[1]}")
    return equal


def _read_job(folder: Path, prefix: str) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """(TAR % by FAR, pair scores, image features) written by eval_ijbc.py into one job folder."""
    paths = [folder / f"{prefix}_result.json", folder / f"{prefix}.npy", folder / f"{prefix}_features.npz"]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{', '.join(missing)} not found; pass the <result-dir>/<job> folder of an eval_ijbc.py run.")
    with np.load(paths[2]) as features:
        feats = features["feats"]
    return json.loads(paths[0].read_text()), np.load(paths[1]), feats


def compare_tables(folder_a: Path, folder_b: Path, target: str, tolerance: float) -> bool:
    """Print both TAR rows and their differences; True when every TAR agrees within `tolerance` points."""
    table_a, scores_a, feats_a = _read_job(folder_a, target.lower())
    table_b, scores_b, feats_b = _read_job(folder_b, target.lower())
    if table_a.keys() != table_b.keys() or scores_a.shape != scores_b.shape or feats_a.shape != feats_b.shape:
        raise UserError(f"'{folder_a}' and '{folder_b}' evaluated different data; run both on the same set.")
    differences = {far: table_b[far] - table_a[far] for far in table_a}
    print(f"A: {folder_a}\nB: {folder_b}")
    print(f"{'TAR % @ FAR':<12}" + "".join(f"{far:>9}" for far in table_a))
    for label, row in (("A", table_a), ("B", table_b), ("B - A", differences)):
        print(f"{label:<12}" + "".join(f"{value:>9.2f}" for value in row.values()))
    unit_a = feats_a / np.linalg.norm(feats_a, axis=1, keepdims=True)  # [N, D]
    unit_b = feats_b / np.linalg.norm(feats_b, axis=1, keepdims=True)
    worst = max(abs(value) for value in differences.values())
    print(f"max |pair score B - A| {np.abs(scores_b - scores_a).max():.3e}; lowest feature cosine "
          f"{(unit_a * unit_b).sum(axis=1).min():.6f}; max |TAR B - A| {worst:.2f} points "
          f"(tolerance {tolerance:.2f})")
    agree = worst <= tolerance
    print("agree" if agree else "disagree")
    return agree


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights", help="two checkpoint folders, tensor by tensor")
    weights.add_argument("folders", type=Path, nargs=2)
    tables = commands.add_parser("tables", help="two eval_ijbc.py job folders")
    tables.add_argument("folders", type=Path, nargs=2)
    tables.add_argument("--target", default="IJBC")
    tables.add_argument("--tolerance", type=float, default=1.0, help="largest TAR difference, percentage points")
    args = parser.parse_args(argv)
    if args.command == "weights":
        same = compare_weights(*args.folders)
    else:
        same = compare_tables(*args.folders, args.target, args.tolerance)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
