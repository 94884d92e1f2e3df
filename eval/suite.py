"""Every benchmark found under a data root in one run, one model load, one table: the suite of a paper's table.

    python -m eval.suite --model-prefix model.pt --network vit_s_dp005_mask_0 --data-root DIR
    python -m eval.suite --onnx model.onnx --data-root DIR --only lfw,ijbc --features-cache cache/
    python -m eval.suite --compare a/suite.json b/suite.json

Finds the benchmarks of eval/benchmarks.py under --data-root (one line each: found or skipped, and why),
embeds each image set once (flip test: embedding of the image plus that of its mirror, as every protocol
here prescribes), scores it with the project's metric code (eval.verification's 10-fold accuracy,
eval/ijb.py's TAR@FAR and 1:N search) and writes <result-dir>/suite.json, suite.md and suite.csv. Numbers
from non-finite or degenerate embeddings (eval.guard) are never printed: the cell says why. Percentages
throughout, except XNorm. Legend: N images, D embedding size, P pairs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval import benchmarks as bm
from eval.guard import degenerate_reason, non_finite_rows, unit_rows
from utils.errors import UserError, entry_point
from utils.files import atomic_write, atomic_write_text

SUITE_VERSION = 1
MIN_BATCHES_FOR_WORKERS = 4


# ---- embeddings, once per image set, cached by model, precision, flip and the set's files ----

@dataclass(frozen=True)
class Embeddings:
    """plain [N, D] and mirrored [N, D] float32 (mirrored None without flip), faces that were centred."""

    plain: np.ndarray
    mirrored: np.ndarray | None
    num_centred: int = 0

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.plain,) if self.mirrored is None else (self.plain, self.mirrored)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_fingerprint(paths: list[Path]) -> str:
    """SHA-256 (16 hex digits) of the paths, sizes and modification times of an image set's files."""
    digest = hashlib.sha256()
    for path in paths:
        status = path.stat()
        digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class Embedder:
    """The model, loaded on first use (a run served wholly by --features-cache never loads it), and the
    embedding of image sets, read from or written to the features cache."""

    def __init__(self, args: argparse.Namespace, model_sha256: str):
        self.args = args
        self.model_sha256 = model_sha256
        self.precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
        self._model = None
        self._device = None
        self.network_runs = 0

    def model(self):
        if self._model is None:
            from utils.distributed import pick_device

            self._device = pick_device(0, self.args.device)
            if self.args.onnx:
                from eval.onnx_backbone import load_onnx_backbone

                self._model = load_onnx_backbone(self.args.onnx, self._device)
            else:
                from backbones import load_backbone

                self._model = load_backbone(self.args.network, self.args.model_prefix).to(self._device).eval()
        return self._model

    def amp_dtype(self):
        from utils.precision import autocast_dtype

        return autocast_dtype(self.precision)

    def cache_path(self, key: str, fingerprint: str) -> Path | None:
        if not self.args.features_cache:
            return None
        flip = "flip" if self.args.flip else "noflip"
        name = f"{key}_{self.model_sha256[:16]}_{self.precision}_{flip}_{fingerprint}.npz"
        return Path(self.args.features_cache) / name

    def cached(self, key: str, fingerprint: str, compute) -> Embeddings:
        """Embeddings from the cache file of (model, precision, flip, key, files), else `compute()`, saved."""
        path = self.cache_path(key, fingerprint)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    mirrored = saved["mirrored"] if "mirrored" in saved.files else None
                    return Embeddings(saved["plain"], mirrored, int(saved["num_centred"]))
            except (OSError, ValueError, KeyError) as exc:
                raise UserError(f"features cache file '{path}' is unreadable ({type(exc).__name__}: {exc}); "
                                "delete it and run again.") from None
        result = compute()
        self.network_runs += 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {"plain": result.plain, "num_centred": np.int64(result.num_centred)}
            if result.mirrored is not None:
                arrays["mirrored"] = result.mirrored
            atomic_write(path, lambda stream: np.savez(stream, **arrays))
        return result

    def images(self, key: str, fingerprint: str, decode, desc: str) -> Embeddings:
        """Embeddings of decoded uint8 images [N, 3, 112, 112] that `decode()` returns (a .bin set)."""
        def compute() -> Embeddings:
            from tqdm import tqdm

            from eval.embed import embed_batch

            images = decode()
            model, plain, mirrored = self.model(), [], []
            size = self.args.batch_size
            for start in tqdm(range(0, len(images), size), desc=desc, unit="batch", file=sys.stderr):
                batch_plain, batch_mirrored = embed_batch(model, images[start:start + size], self._device,
                                                          amp_dtype=self.amp_dtype(), flip=self.args.flip)
                plain.append(batch_plain)
                mirrored.append(batch_mirrored)
            return Embeddings(np.concatenate(plain), np.concatenate(mirrored) if self.args.flip else None)
        return self.cached(key, fingerprint, compute)

    def faces(self, key: str, faces: bm.FaceFiles, desc: str) -> Embeddings:
        """Embeddings of image files, loaded and aligned by eval.benchmarks.FaceDataset in workers."""
        def compute() -> Embeddings:
            import torch
            from torch.utils.data import DataLoader
            from tqdm import tqdm

            from eval.embed import embed_batch

            dataset = bm.FaceDataset(faces)
            # Spawning workers costs seconds; a set of a few batches decodes faster in this process.
            use_workers = self.args.num_workers and len(dataset) >= MIN_BATCHES_FOR_WORKERS * self.args.batch_size
            workers = dict(num_workers=self.args.num_workers, multiprocessing_context="spawn") if use_workers else {}
            loader = DataLoader(dataset, batch_size=self.args.batch_size, shuffle=False,
                                collate_fn=bm.collate_faces, **workers)
            model = self.model()
            plain = mirrored = None
            num_centred = 0
            with torch.inference_mode(), tqdm(total=len(dataset), desc=desc, unit="img", file=sys.stderr) as bar:
                for images, indices, ok, centred in loader:
                    if not bool(ok.all()):
                        raise UserError(f"image '{faces.paths[int(indices[~ok][0])]}' cannot be read or decoded; "
                                        "replace the file.")
                    batch_plain, batch_mirrored = embed_batch(model, images, self._device,
                                                              amp_dtype=self.amp_dtype(), flip=self.args.flip)
                    if plain is None:
                        plain = np.empty((len(dataset), batch_plain.shape[1]), dtype=np.float32)  # [N, D]
                        mirrored = np.empty_like(plain) if self.args.flip else None
                    rows = indices.numpy()
                    plain[rows] = batch_plain
                    if mirrored is not None:
                        mirrored[rows] = batch_mirrored
                    num_centred += int(centred.sum())
                    bar.update(len(rows))
            return Embeddings(plain, mirrored, num_centred)
        return self.cached(key, files_fingerprint(faces.paths), compute)


def refusal(embeddings: Embeddings, source: str) -> str | None:
    """Why eval.guard refuses these embeddings (non-finite rows, or degenerate: no identity), or None."""
    bad = non_finite_rows(*embeddings.arrays())
    if bad.any():
        return f"refused: {int(bad.sum())} of {len(bad)} embeddings of {source} are not finite (NaN or inf)"
    reason = degenerate_reason(*embeddings.arrays())
    return None if reason is None else f"refused: degenerate embeddings of {source} ({reason})"


# ---- one runner per registry member: found instance -> result entries ----

def _result(found: bm.Found, benchmark: bm.Benchmark, metrics: dict, sizes: dict, refused: str | None,
            headline: list[str], **extra) -> dict:
    return {"benchmark": found.name, "family": benchmark.key, "title": benchmark.title,
            "protocol": benchmark.protocol, "path": str(found.path), "note": found.note, "sizes": sizes,
            "metrics": {} if refused else metrics, "headline": headline, "refused": refused, **extra}


def _accuracy(plain: np.ndarray, mirrored: np.ndarray | None, issame: np.ndarray, num_folds: int) -> dict[str, float]:
    """eval.verification's 10-fold accuracy of embeddings [2P, D] in .bin pair order, in percent; without
    the flip test the mirrors' part is zero and XNorm is that of the plain embeddings."""
    from eval.verification import accuracy_from_embeddings

    result = accuracy_from_embeddings(plain, np.zeros_like(plain) if mirrored is None else mirrored, issame,
                                      num_folds)
    xnorm = result["xnorm"] if mirrored is not None else float(np.linalg.norm(plain, axis=1).mean())
    return {"accuracy": result["accuracy"] * 100, "std": result["std"] * 100, "xnorm": xnorm}


def run_bin(found, benchmark, embedder: Embedder, args) -> dict:
    """insightface .bin: 10-fold accuracy as eval.verification computes it."""
    from eval.verification import NUM_FOLDS, read_checked
    from utils.binfile import decode_bin_images

    encoded, issame = read_checked(found.path)
    fingerprint = files_fingerprint([found.path])
    embeddings = embedder.images(f"bin-{found.name}", fingerprint,
                                 lambda: decode_bin_images(encoded, source=str(found.path)), found.name)
    sizes = {"pairs": len(issame), "images": len(encoded), "folds": NUM_FOLDS}
    refused = refusal(embeddings, f"{found.path.name}")
    metrics = {} if refused else _accuracy(embeddings.plain, embeddings.mirrored, np.asarray(issame), NUM_FOLDS)
    return _result(found, benchmark, metrics, sizes, refused, ["accuracy"])


def _pair_set_accuracy(embedder, key, pairs: bm.PairList, faces: bm.FaceFiles, source: str):
    embeddings = embedder.faces(key, faces, key)
    refused = refusal(embeddings, source)
    if refused:
        return None, refused, embeddings
    plain, mirrored = bm.pair_embeddings(embeddings.plain, embeddings.mirrored, pairs)
    return _accuracy(plain, mirrored, pairs.issame, pairs.num_folds), None, embeddings


def run_lfw_pairs(found, benchmark, embedder: Embedder, args) -> dict:
    """LFW View 2 from pairs.txt: the header's folds, 10-fold accuracy by eval.verification."""
    pairs = bm.read_lfw_pairs(found.path / "pairs.txt")
    landmarks = found.options["landmarks"]
    faces = bm.pair_faces(pairs, found.options["images"], bm.read_landmark_file(landmarks) if landmarks else None,
                          str(found.path / "pairs.txt"))
    metrics, refused, embeddings = _pair_set_accuracy(embedder, "lfw_pairs", pairs, faces, "LFW")
    sizes = {"pairs": len(pairs.issame), "images": len(pairs.images), "folds": pairs.num_folds,
             "centred_crops": embeddings.num_centred}
    return _result(found, benchmark, metrics or {}, sizes, refused, ["accuracy"])


def run_rfw(found, benchmark, embedder: Embedder, args) -> dict:
    """RFW: 10-fold accuracy per race; mean and std (population) of the four race accuracies."""
    root = found.path.parent.parent
    metrics, sizes = {}, {}
    for race in bm.RFW_RACES:
        folder, pair_file, landmark_file = bm.rfw_paths(root, race)
        pairs = bm.read_rfw_pairs(pair_file)
        faces = bm.pair_faces(pairs, folder, bm.read_landmark_file(landmark_file), str(pair_file))
        race_metrics, refused, _ = _pair_set_accuracy(embedder, f"rfw-{race}", pairs, faces, f"RFW {race}")
        if refused:
            return _result(found, benchmark, {}, sizes, refused, [])
        metrics[race] = race_metrics["accuracy"]
        sizes[race] = {"pairs": len(pairs.issame), "images": len(pairs.images)}
    race_accuracies = [metrics[race] for race in bm.RFW_RACES]
    metrics["mean"] = float(np.mean(race_accuracies))
    metrics["std"] = float(np.std(race_accuracies))
    return _result(found, benchmark, metrics, sizes, None, [*bm.RFW_RACES, "mean", "std"])


def run_ijb(found, benchmark, embedder: Embedder, args) -> dict:
    """IJB-B / IJB-C through eval_ijbc's own steps: features, template pooling, 1:1 table, 1:N search."""
    import eval_ijbc
    from eval import ijb
    from eval.ijb_data import MetaPaths, check_images_exist, read_image_meta

    target = found.options["target"]
    paths = MetaPaths.of(found.path, target)
    meta = read_image_meta(paths)
    image_dir = found.path / "loose_crop"
    check_images_exist(image_dir, meta)

    def compute() -> Embeddings:
        feats, feats_flip = eval_ijbc.extract_features(
            embedder.model(), meta, image_dir, device=embedder._device, batch_size=args.batch_size,
            num_workers=args.num_workers, flip=args.flip, amp_dtype=embedder.amp_dtype())
        return Embeddings(feats, feats_flip)

    embeddings = embedder.cached(found.name, files_fingerprint([paths.landmarks, paths.media, image_dir]), compute)
    sizes = {"images": len(meta.names), "templates": len(np.unique(meta.templates))}
    refused = refusal(embeddings, target)
    if refused:
        return _result(found, benchmark, {}, sizes, refused, [])
    template_ids, template_feats = ijb.template_features(
        embeddings.plain, meta.templates, meta.medias, feats_flip=embeddings.mirrored,
        faceness=meta.faceness if args.detector_score else None, normalize_images=not args.norm_score)
    out_dir = Path(args.result_dir) / found.name
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = target.lower()
    table = eval_ijbc.run_verification(template_ids, template_feats, paths, out_dir, prefix, found.name,
                                       args.table_rule)
    metrics = {f"TAR@FAR={far}": tar for far, tar in table.items()}
    headline = list(metrics)
    if paths.has_identification():
        one_to_n = eval_ijbc.run_identification(template_ids, template_feats, paths, out_dir, prefix, found.name)
        metrics.update({f"1:N {key}": value for key, value in one_to_n["mean"].items()})
        headline.append("1:N rank1")
    sizes["pairs"] = len(np.load(out_dir / f"{prefix}.npy", mmap_mode="r"))  # the scores eval_ijbc saved
    return _result(found, benchmark, metrics, sizes, None, headline,
                   switches={"norm_score": args.norm_score, "detector_score": args.detector_score,
                             "table_rule": args.table_rule, "rank_rule": ijb.RANK_RULE})


def run_tinyface(found, benchmark, embedder: Embedder, args) -> dict:
    """TinyFace closed-set identification: probes searched in Gallery_Match plus every Gallery_Distractor
    image (each distractor its own identity), by eval/ijb.py's `identification` at ranks 1, 5, 20."""
    from eval import ijb

    testing = found.path
    probe_names, probe_ids = bm.read_tinyface_mat(testing / "probe_img_ID_pairs.mat", "probe_set", "probe_ids")
    match_names, match_ids = bm.read_tinyface_mat(testing / "gallery_match_img_ID_pairs.mat", "gallery_set",
                                                  "gallery_ids")
    distractor_names = bm.image_names(testing / "Gallery_Distractor")
    parts = [bm.tinyface_files(testing, part, names) for part, names in
             zip(bm.TINYFACE_PARTS, (probe_names, match_names, distractor_names))]
    faces = bm.FaceFiles([p for files, _ in parts for p in files.paths],
                         np.concatenate([files.landmarks for files, _ in parts]))
    embeddings = embedder.faces("tinyface", faces, "tinyface")
    num_probe, num_match = len(probe_names), len(match_names)
    sizes = {"probes": num_probe, "gallery_match": num_match, "distractors": len(distractor_names),
             "aligned_copy": sum(n for _, n in parts), "centred_crops": embeddings.num_centred}
    refused = refusal(embeddings, "TinyFace")
    if refused:
        return _result(found, benchmark, {}, sizes, refused, [])
    combined = embeddings.plain if embeddings.mirrored is None else embeddings.plain + embeddings.mirrored
    units = unit_rows(combined, source="TinyFace", describe=lambda row: f"'{faces.paths[row]}'")  # [N, D]
    distractor_ids = min(int(probe_ids.min()), int(match_ids.min())) - 1 - np.arange(len(distractor_names))
    gallery_ids = np.concatenate([match_ids, distractor_ids])  # [G]
    result = ijb.identification(units[:num_probe], probe_ids, units[num_probe:], gallery_ids,
                                ranks=bm.TINYFACE_RANKS, fpirs=())
    metrics = {f"rank{k}": result[f"rank{k}"] for k in bm.TINYFACE_RANKS}
    sizes["mated_probes"] = result["num_mated"]
    return _result(found, benchmark, metrics, sizes, None, list(metrics))


RUNNERS = {"bin": run_bin, "lfw_pairs": run_lfw_pairs, "rfw": run_rfw, "ijbb": run_ijb, "ijbc": run_ijb,
           "tinyface": run_tinyface}


# ---- discovery ----

def discover(root: Path, only: set[str] | None) -> tuple[list[tuple[bm.Benchmark, bm.Found]], list[str]]:
    """(instances to run, one line per benchmark found or skipped). `only` holds registry keys or
    instance names (`lfw`, `cfp_fp`, ...)."""
    if not root.is_dir():
        raise UserError(f"--data-root '{root}' is not a folder; pass the folder that holds the benchmarks.")
    planned, lines = [], []
    for benchmark in bm.BENCHMARKS:
        found = benchmark.find(root)
        if isinstance(found, str):
            lines.append(f"skipped {benchmark.title}: {found}")
            continue
        if not found:
            lines.append(f"skipped {benchmark.title}: not found (expected {benchmark.layout})")
            continue
        for instance in found:
            if only is not None and benchmark.key not in only and instance.name not in only:
                lines.append(f"skipped {instance.name}: not in --only")
                continue
            note = f" ({instance.note})" if instance.note else ""
            lines.append(f"found {instance.name}: {instance.path}{note}")
            planned.append((benchmark, instance))
    return planned, lines


# ---- tables ----

def format_value(metric: str, value: float) -> str:
    return f"{value:.3f}" if metric == "xnorm" else f"{value:.2f}"


def headline_cells(result: dict) -> dict[str, str]:
    """{column: cell} of a result's headline metrics, or one cell with the refusal."""
    if result["refused"]:
        return {result["benchmark"]: result["refused"]}
    return {f"{result['benchmark']} {metric}": format_value(metric, result["metrics"][metric])
            for metric in result["headline"]}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def suite_markdown(suite: dict) -> str:
    """The paper-style table (one row: the model, one column per headline number), then every number."""
    cells: dict[str, str] = {}
    for result in suite["results"]:
        cells.update(headline_cells(result))
    model = suite["model"]
    parts = [f"# Benchmark suite: {model['file']}", "",
             f"SHA-256 {model['sha256']}; precision {suite['settings']['precision']}; flip test "
             f"{'on' if suite['settings']['flip'] else 'off'}; percent except XNorm.", "",
             markdown_table(["model", *cells], [[model["name"], *cells.values()]]), "", "## Every number", ""]
    rows = []
    for result in suite["results"]:
        if result["refused"]:
            rows.append([result["benchmark"], "", result["refused"], f"{result['seconds']:.1f}"])
        for metric, value in result["metrics"].items():
            rows.append([result["benchmark"], metric, format_value(metric, value), f"{result['seconds']:.1f}"])
    parts.append(markdown_table(["benchmark", "metric", "value", "seconds"], rows))
    return "\n".join(parts) + "\n"


def suite_csv(suite: dict) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["benchmark", "metric", "value", "refused", "protocol", "flip", "precision", "seconds"])
    for result in suite["results"]:
        common = [suite["settings"]["flip"], suite["settings"]["precision"], f"{result['seconds']:.3f}"]
        if result["refused"]:
            writer.writerow([result["benchmark"], "", "", result["refused"], result["protocol"], *common])
        for metric, value in result["metrics"].items():
            writer.writerow([result["benchmark"], metric, repr(value), "", result["protocol"], *common])
    return text.getvalue()


# ---- --compare ----

def read_suite(path: str | Path) -> dict:
    from utils.files import read_text

    try:
        suite = json.loads(read_text(path, "suite result", "pass a suite.json written by python -m eval.suite"))
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}' is not JSON ({exc}); pass a suite.json written by python -m eval.suite.") from None
    if not isinstance(suite, dict) or "results" not in suite or "model" not in suite:
        raise UserError(f"'{path}' is not a suite.json (no 'model' and 'results'); pass one written by "
                        "python -m eval.suite.")
    return suite


def compare_table(a: dict, b: dict) -> str:
    """Both models' numbers side by side, B - A, benchmarks present in only one marked."""
    results_a = {r["benchmark"]: r for r in a["results"]}
    results_b = {r["benchmark"]: r for r in b["results"]}
    names = list(results_a) + [name for name in results_b if name not in results_a]
    rows = []
    for name in names:
        ra, rb = results_a.get(name), results_b.get(name)
        if ra is None or rb is None:
            present = ra or rb
            where = "a" if ra else "b"
            for metric in present["metrics"] or [""]:
                value = format_value(metric, present["metrics"][metric]) if metric else present["refused"]
                rows.append([name, metric, value if ra else "absent", value if rb else "absent",
                             f"only in {where}"])
            continue
        metrics = list(ra["metrics"]) + [m for m in rb["metrics"] if m not in ra["metrics"]]
        if ra["refused"] or rb["refused"]:
            rows.append([name, "", ra["refused"] or "ok", rb["refused"] or "ok", "not comparable"])
            continue
        for metric in metrics:
            va, vb = ra["metrics"].get(metric), rb["metrics"].get(metric)
            cell_a = format_value(metric, va) if va is not None else "absent"
            cell_b = format_value(metric, vb) if vb is not None else "absent"
            diff = f"{vb - va:+.{3 if metric == 'xnorm' else 2}f}" if va is not None and vb is not None else \
                f"only in {'a' if vb is None else 'b'}"
            rows.append([name, metric, cell_a, cell_b, diff])
    header = ["benchmark", "metric", f"a: {a['model']['name']}", f"b: {b['model']['name']}", "b - a"]
    settings_a, settings_b = a.get("settings", {}), b.get("settings", {})
    differ = [f"{key} {settings_a.get(key)} vs {settings_b.get(key)}" for key in ("flip", "precision")
              if settings_a.get(key) != settings_b.get(key)]
    warning = f"settings differ: {', '.join(differ)}\n" if differ else ""
    return (f"a: {a['model']['file']} (SHA-256 {a['model']['sha256'][:12]})\n"
            f"b: {b['model']['file']} (SHA-256 {b['model']['sha256'][:12]})\n{warning}\n"
            + markdown_table(header, rows))


# ---- command line ----

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print two suite.json side by side")
    parser.add_argument("--model-prefix", help="backbone weights (.pt state_dict); needs --network")
    parser.add_argument("--onnx", help="an ONNX model (tools/export_onnx.py), run by ONNX Runtime")
    parser.add_argument("--network", help="backbone name (backbones.get_model), with --model-prefix")
    parser.add_argument("--data-root", help="folder holding the benchmarks in their published layouts")
    parser.add_argument("--result-dir", default="suite_results", help="suite.json, suite.md, suite.csv go here")
    parser.add_argument("--only", help="comma-separated benchmarks: registry keys (bin, lfw_pairs, rfw, ijbb, ijbc, "
                                       "tinyface) or set names (lfw, cfp_fp, ...)")
    parser.add_argument("--features-cache", help="folder of saved embeddings: a second run skips the network")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA if available)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="run the network under fp16 autocast")
    precision.add_argument("--bf16", action="store_true", help="run the network under bf16 autocast")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="flip test: add the embedding of the mirrored image (every protocol here: on)")
    parser.add_argument("--norm-score", action=argparse.BooleanOptionalAction, default=True, help="IJB, as eval_ijbc")
    parser.add_argument("--detector-score", action=argparse.BooleanOptionalAction, default=True,
                        help="IJB, as eval_ijbc")
    parser.add_argument("--table-rule", default="nearest", choices=("nearest", "interpolated"),
                        help="IJB, as eval_ijbc")
    args = parser.parse_args(argv)
    if args.compare:
        return args
    if not args.data_root:
        parser.error("--data-root is required (or --compare A B)")
    if bool(args.model_prefix) == bool(args.onnx):
        parser.error("pass one model: --model-prefix (with --network) or --onnx")
    if args.model_prefix and not args.network:
        parser.error("--model-prefix needs --network (the backbone name, e.g. vit_t)")
    if args.onnx and (args.fp16 or args.bf16):
        parser.error("--fp16/--bf16 apply to PyTorch autocast; an ONNX model runs in the precision it was exported in")
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch-size must be positive and --num-workers non-negative")
    return args


def run_suite(args: argparse.Namespace) -> dict:
    """Discover, embed, score, write; returns the suite dict (as suite.json)."""
    only = None if not args.only else {name.strip() for name in args.only.split(",") if name.strip()}
    known = set(bm.BENCHMARK_KEYS) | set(bm.BIN_SETS)
    planned, lines = discover(Path(args.data_root), only)
    unknown = sorted(name for name in only or () if name not in known and name not in {f.name for _, f in planned})
    if unknown:
        raise UserError(f"--only names {', '.join(unknown)}, which is not a benchmark found under "
                        f"{args.data_root}; choose from {', '.join(bm.BENCHMARK_KEYS)} or a set name.")
    for line in lines:
        print(line)
    if not planned:
        raise UserError(f"no benchmark found under '{args.data_root}'; see docs/evaluation.md for the layouts.")
    model_file = Path(args.onnx or args.model_prefix)
    from utils.files import check_regular_file

    check_regular_file(model_file, "model file", "pass the weights to evaluate")
    embedder = Embedder(args, sha256_file(model_file))
    results = []
    for benchmark, found in planned:
        start = time.perf_counter()
        result = RUNNERS[benchmark.key](found, benchmark, embedder, args)
        result["seconds"] = time.perf_counter() - start
        results.append(result)
    suite = {
        "version": SUITE_VERSION,
        "model": {"name": model_file.stem, "file": str(model_file), "sha256": embedder.model_sha256,
                  "network": None if args.onnx else args.network, "onnx": bool(args.onnx)},
        "settings": {"flip": args.flip, "precision": embedder.precision, "device": args.device,
                     "batch_size": args.batch_size, "data_root": str(args.data_root),
                     "features_cache": args.features_cache, "network_runs": embedder.network_runs},
        "discovery": lines,
        "results": results,
    }
    out = Path(args.result_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "suite.json", json.dumps(suite, indent=2) + "\n")
    atomic_write_text(out / "suite.md", suite_markdown(suite))
    atomic_write_text(out / "suite.csv", suite_csv(suite))
    return suite


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare:
        print(compare_table(read_suite(args.compare[0]), read_suite(args.compare[1])))
        return 0
    suite = run_suite(args)
    print(suite_markdown(suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
