"""Evaluate a backbone on IJB-B / IJB-C: 1:1 verification (TAR@FAR) and 1:N identification.

Keeps the released script's flags and outputs; see docs/evaluation.md for the data layout and switches.

    python eval_ijbc.py --model-prefix model.pt --network vit_s_dp005_mask_0 \
        --image-path IJB_release/IJBC --result-dir results --job transface_s --target IJBC

Writes under <result-dir>/<job>/ (file names lower-case, as released): ijbc.npy (pair scores),
ijbc_features.npz (feats, feats_flip, faceness), ijbc_result.json (TAR % keyed by FAR), ijbc.pdf and
ijbc.png (ROC), ijbc_settings.json (the switches and table rule), ijbc_1N_result.json (1:N).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prettytable import PrettyTable

from eval import ijb
from eval.guard import check_embeddings
from eval.ijb_data import (
    TARGETS,
    ImageMeta,
    MetaPaths,
    check_faceness,
    check_images_exist,
    read_identification_csv,
    read_image_meta,
    read_pairs,
)
from utils.errors import UserError, entry_point
from utils.files import atomic_write, atomic_write_text, check_regular_file

if TYPE_CHECKING:  # PyTorch is imported only when a network runs: --features starts in a fraction of the time
    import torch

PROTOCOLS = ("1:1", "1:N", "all")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-prefix", default="", help="backbone weights (.pt state_dict)")
    parser.add_argument("--image-path", required=True, help="folder holding loose_crop/ and meta/")
    parser.add_argument("--result-dir", default=".", help="outputs go to <result-dir>/<job>/")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--network", default="vit_t", help="backbone name (backbones.get_model)")
    parser.add_argument("--job", default="transface", help="run name: output sub-folder and table row")
    parser.add_argument("--target", default="IJBC", choices=TARGETS)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA if available)")
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="image decoding and alignment processes (0: in the main process)")
    parser.add_argument("--protocol", default="all", choices=PROTOCOLS,
                        help="all: 1:1, plus 1:N when its meta files exist")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="add the embedding of the mirrored image (released: on)")
    parser.add_argument("--norm-score", action=argparse.BooleanOptionalAction, default=True,
                        help="keep each image feature's norm as its quality weight, as the released "
                             "use_norm_score=True; --no-norm-score L2-normalises image features first")
    parser.add_argument("--detector-score", action=argparse.BooleanOptionalAction, default=True,
                        help="weight each image feature by its faceness score (released: on)")
    parser.add_argument("--features", default=None,
                        help="score the features saved by an earlier run (<target>_features.npz)")
    parser.add_argument("--onnx", default=None,
                        help="evaluate this ONNX model (tools/export_onnx.py) with ONNX Runtime instead of "
                             "--model-prefix/--network; same loader, batches and flip test")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="run the network under fp16 autocast")
    precision.add_argument("--bf16", action="store_true", help="run the network under bf16 autocast")
    parser.add_argument("--table-rule", default="nearest", choices=tuple(ijb.TABLE_RULES),
                        help="nearest: released nearest-FPR point; interpolated: best TPR at FPR <= FAR")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    if args.onnx and args.model_prefix:
        parser.error("--onnx and --model-prefix name two models; pass one of them")
    if args.features and args.onnx:
        parser.error("--features scores saved features without a model; drop --onnx (or --features)")
    if args.onnx and (args.fp16 or args.bf16):
        parser.error("--fp16/--bf16 apply to PyTorch autocast; an ONNX model runs in the precision it was "
                     "exported in")
    if args.num_workers < 0:
        parser.error("--num-workers must be non-negative")
    return args


def _write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def _autocast_dtype(args: argparse.Namespace) -> torch.dtype | None:
    from utils.precision import autocast_dtype

    return autocast_dtype("fp16" if args.fp16 else "bf16" if args.bf16 else "fp32")


def extract_features(model: torch.nn.Module, meta: ImageMeta, image_dir: Path, *, device: torch.device,
                     batch_size: int, num_workers: int, flip: bool,
                     amp_dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings of every aligned image [N, D] float32, and of its mirror image when `flip`."""
    import torch
    from tqdm import tqdm

    from eval.embed import embed_batch
    from eval.ijb_images import AlignedFaces, aligned_loader

    dataset = AlignedFaces(image_dir, meta.names, meta.landmarks)
    loader = aligned_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda")
    feats = feats_flip = None
    with torch.inference_mode(), tqdm(total=len(dataset), unit="img", desc="features",
                                      file=sys.stderr) as progress:
        for images, indices, ok in loader:
            if not bool(ok.all()):
                row = int(indices[~ok][0])
                raise UserError(f"image '{image_dir / meta.names[row]}' (line {row + 1} of {meta.source}) "
                                "could not be decoded; replace the file.")
            plain, mirrored = embed_batch(model, images, device, amp_dtype=amp_dtype, flip=flip)  # [B, D] each
            if feats is None:
                feats = np.empty((len(dataset), plain.shape[1]), dtype=np.float32)
                feats_flip = np.empty_like(feats) if flip else None
            rows = indices.numpy()
            feats[rows] = plain
            if flip:
                feats_flip[rows] = mirrored
            progress.update(len(rows))
    return feats, feats_flip


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (read-only), each member read with one CRC-checked read and used in place.

    np.load copies a member through zipfile in 1 MiB pieces, 3-4x the time at IJB-C size (1.9 GB of
    features); object arrays are refused (they would need pickle).
    """
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            stream = io.BytesIO(data)
            version = np.lib.format.read_magic(stream)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                arrays[name.removesuffix(".npy")] = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
                continue
            shape, fortran_order, dtype = read_header(stream)
            if dtype.hasobject:
                raise ValueError(f"member {name} holds Python objects")
            array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
            arrays[name.removesuffix(".npy")] = array.reshape(shape, order="F" if fortran_order else "C")
    return arrays


def load_saved_features(path: Path, meta: ImageMeta, flip: bool) -> tuple[np.ndarray, np.ndarray | None,
                                                                         np.ndarray]:
    """(feats, feats_flip or None, faceness) from a features .npz written by this script."""
    check_regular_file(path, "features file", "pass the <target>_features.npz of an earlier run")
    try:
        arrays = read_npz(path)
    except Exception as exc:
        raise UserError(f"'{path}' is not a readable .npz file ({type(exc).__name__}: {exc}); pass the "
                        "<target>_features.npz of an earlier run.") from exc
    missing = [key for key in ("feats", "faceness") if key not in arrays]
    if missing:
        raise UserError(f"'{path}' has no array {', '.join(missing)}; pass the <target>_features.npz of "
                        "an earlier run.")
    if flip and "feats_flip" not in arrays:
        raise UserError(f"'{path}' was saved without the flip test (no feats_flip); add --no-flip.")
    feats, faceness = arrays["feats"], arrays["faceness"]
    feats_flip = arrays["feats_flip"] if flip else None
    expected = {"feats": f"[{len(meta.names)}, D]", "feats_flip": f"[{len(meta.names)}, D]",
                "faceness": f"[{len(meta.names)}]"}
    for name, array, ok in (("feats", feats, feats.ndim == 2 and len(feats) == len(meta.names)),
                            ("feats_flip", feats_flip, feats_flip is None or feats_flip.shape == feats.shape),
                            ("faceness", faceness, faceness.shape == (len(meta.names),))):
        if not ok:
            raise UserError(f"array {name} of '{path}' has shape {list(array.shape)}, expected {expected[name]} "
                            f"({meta.source} lists {len(meta.names)} images; D = the width of feats); use the "
                            "features saved for this --image-path and --target.")
    return feats, feats_flip, faceness


def _pair_rows(template_ids: np.ndarray, pairs_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of both templates of each pair in the template features, and the labels."""
    first, second, labels = read_pairs(pairs_path)
    rows_a, found_a = ijb.template_rows_of(template_ids, first)
    rows_b, found_b = ijb.template_rows_of(template_ids, second)
    missing = np.flatnonzero(~(found_a & found_b))
    if len(missing):
        pair = int(missing[0])
        raise UserError(f"pair {pair + 1} of {pairs_path} ({first[pair]} {second[pair]}) names a template "
                        "with no images in the template/media file; the meta files do not belong together.")
    return rows_a, rows_b, labels


def save_roc_plot(fpr: np.ndarray, tpr: np.ndarray, stem: Path, title: str, label: str) -> None:
    """The ROC on a log FPR axis, as PDF and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    # A log axis cannot show FPR 0: draw those points just left of the view so the curve enters it.
    visible_fpr = np.maximum(fpr, ijb.FARS[0] / 10)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids under the ROC
    axis.plot(visible_fpr, tpr, lw=1, label=f"{label} (AUC = {area * 100:.4f} %)")
    axis.set_xscale("log")
    axis.set_xlim(ijb.FARS[0], 1.0)
    axis.set_ylim(0.0, 1.01)
    axis.grid(linestyle="--", linewidth=0.5)
    axis.set_xlabel("False Positive Rate")
    axis.set_ylabel("True Positive Rate")
    axis.set_title(title)
    axis.legend(loc="lower right")
    for kind in ("pdf", "png"):
        atomic_write(stem.with_suffix(f".{kind}"), functools.partial(figure.savefig, format=kind, dpi=150))
    plt.close(figure)


def run_verification(template_ids: np.ndarray, template_feats: np.ndarray, paths: MetaPaths, out_dir: Path,
                     prefix: str, job: str, rule: str) -> dict[str, float]:
    """1:1: pair scores, TAR@FAR table, ROC plot; returns the table."""
    rows_a, rows_b, labels = _pair_rows(template_ids, paths.pairs)
    scores = ijb.pair_scores(template_feats, rows_a, rows_b)
    del rows_a, rows_b  # 250 MB on IJB-C that the ROC does not need
    atomic_write(out_dir / f"{prefix}.npy", lambda stream: np.save(stream, scores))
    fpr, tpr = ijb.roc(labels, scores)
    table = ijb.tar_at_far(fpr, tpr, rule=rule)
    _write_json(out_dir / f"{prefix}_result.json", table)
    save_roc_plot(fpr, tpr, out_dir / prefix, f"ROC on {prefix.upper()} 1:1", job)
    printed = PrettyTable(["Methods", *table])
    printed.add_row([job, *(f"{tar:.2f}" for tar in table.values())])
    printed.title = f"{prefix.upper()} 1:1 TAR (%) @ FAR, rule '{rule}': {ijb.TABLE_RULES[rule]}"
    print(printed)
    return table


def run_identification(template_ids: np.ndarray, template_feats: np.ndarray, paths: MetaPaths,
                       out_dir: Path, prefix: str, job: str) -> dict[str, dict]:
    """1:N: probes searched in each gallery; per-gallery metrics and their mean."""
    def features_of(csv_path: Path) -> tuple[np.ndarray, np.ndarray]:
        wanted, subjects = read_identification_csv(csv_path)
        rows, found = ijb.template_rows_of(template_ids, wanted)
        if not found.all():
            raise UserError(f"template {wanted[~found][0]} of {csv_path} has no images in {paths.media}; "
                            "the meta files do not belong together.")
        return template_feats[rows], subjects

    probe_feats, probe_subjects = features_of(paths.probes)
    results = {}
    for name, gallery_path in paths.galleries.items():
        gallery_feats, gallery_subjects = features_of(gallery_path)
        results[name] = ijb.identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects)
    metrics = [key for key in results[next(iter(results))] if not key.startswith("num_")]
    results["mean"] = {key: float(np.mean([results[name][key] for name in paths.galleries]))
                       for key in metrics}
    _write_json(out_dir / f"{prefix}_1N_result.json", results)
    printed = PrettyTable(["Gallery", *metrics])
    for name, values in results.items():
        printed.add_row([name, *(f"{values[key]:.2f}" for key in metrics)])
    printed.title = f"{prefix.upper()} 1:N ({job}): rank-k accuracy and TPIR @ FPIR, %"
    print(printed)
    return results


def image_features(args: argparse.Namespace, meta: ImageMeta, out_dir: Path,
                   prefix: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Features from --features, or from the network (then saved as <prefix>_features.npz); refused by
    eval.guard before anything is written when they are not finite."""
    if args.features:
        feats, feats_flip, faceness = load_saved_features(Path(args.features), meta, args.flip)
        guard_features(args, feats, feats_flip, faceness, meta)
        return feats, feats_flip, faceness
    if not args.model_prefix and not args.onnx:
        raise UserError("--model-prefix is not set; pass the backbone weights (.pt), --onnx or --features.")
    from utils.distributed import pick_device

    device = pick_device(0, args.device)
    if args.onnx:
        from eval.onnx_backbone import load_onnx_backbone

        model = load_onnx_backbone(args.onnx, device)
    else:
        from backbones import load_backbone

        model = load_backbone(args.network, args.model_prefix).to(device).eval()
    image_dir = Path(args.image_path) / "loose_crop"
    check_images_exist(image_dir, meta)
    feats, feats_flip = extract_features(model, meta, image_dir, device=device, batch_size=args.batch_size,
                                         num_workers=args.num_workers, flip=args.flip,
                                         amp_dtype=_autocast_dtype(args))
    guard_features(args, feats, feats_flip, meta.faceness, meta)
    arrays = {"feats": feats, "faceness": meta.faceness}
    if feats_flip is not None:
        arrays["feats_flip"] = feats_flip
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / f"{prefix}_features.npz", lambda stream: np.savez(stream, **arrays))
    return feats, feats_flip, meta.faceness


def guard_features(args: argparse.Namespace, feats: np.ndarray, feats_flip: np.ndarray | None,
                   faceness: np.ndarray, meta: ImageMeta) -> None:
    """eval.guard on the image embeddings [N, D] (and their mirrors'), images named by their meta line;
    with --detector-score, the faceness weights [N] must be finite too (a NaN one zeroes its template)."""
    def describe(row: int) -> str:
        return f"'{meta.names[row]}' (line {row + 1} of {meta.source})"

    arrays = (feats,) if feats_flip is None else (feats, feats_flip)
    check_embeddings(*arrays, source=args.target, describe=describe)
    bad = ~np.isfinite(faceness)
    if args.detector_score and bad.any():
        raise UserError(f"{int(bad.sum())} faceness scores in {args.features or meta.source} are not finite, "
                        f"the first of {describe(int(np.argmax(bad)))}; repair the file or add "
                        "--no-detector-score.")
    if args.detector_score and args.features:
        check_faceness(faceness, meta.names, f"'{args.features}'")  # the meta reader's rule, in one place


def _output_folder(args: argparse.Namespace) -> Path:
    """<result-dir>/<job>, not created yet (nothing is written before the features pass the guard); a
    UserError now when either names something that is not a folder."""
    out_dir = Path(args.result_dir) / args.job
    for folder in (out_dir.parent, out_dir):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"'{folder}' is not a folder; give a --result-dir (and --job) where results can be "
                            "written.")
    return out_dir


def evaluate(args: argparse.Namespace) -> dict:
    paths = MetaPaths.of(args.image_path, args.target)
    run_one_to_many = args.protocol == "1:N" or (args.protocol == "all" and paths.has_identification())
    if args.protocol == "1:N" and not paths.has_identification():
        raise UserError(f"1:N needs {paths.probes} and the gallery files "
                        f"{', '.join(str(p) for p in paths.galleries.values())}; copy them into meta/.")
    meta = read_image_meta(paths)
    out_dir = _output_folder(args)
    prefix = args.target.lower()
    feats, feats_flip, faceness = image_features(args, meta, out_dir, prefix)
    out_dir.mkdir(parents=True, exist_ok=True)
    template_ids, template_feats = ijb.template_features(
        feats, meta.templates, meta.medias, feats_flip=feats_flip if args.flip else None,
        faceness=faceness if args.detector_score else None, normalize_images=not args.norm_score)
    settings = {key: getattr(args, key) for key in ("target", "network", "model_prefix", "onnx", "features", "flip",
                                                    "norm_score", "detector_score", "table_rule", "protocol")}
    settings["table_rule_meaning"] = ijb.TABLE_RULES[args.table_rule]
    settings["rank_rule"] = ijb.RANK_RULE
    _write_json(out_dir / f"{prefix}_settings.json", settings)
    results = {}
    if args.protocol in ("1:1", "all"):
        results["1:1"] = run_verification(template_ids, template_feats, paths, out_dir, prefix, args.job,
                                          args.table_rule)
    if run_one_to_many:
        results["1:N"] = run_identification(template_ids, template_feats, paths, out_dir, prefix, args.job)
    return results


@entry_point
def main(argv=None) -> int:
    evaluate(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
