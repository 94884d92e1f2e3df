"""The released IJB-C 1:1 scoring, written plainly, run as its own process: the baseline of bench/bench_ijb.py.

    python -m bench.released_ijb --features ijbc_features.npz --image-path IJBC --result-dir out

What insightface's IJB script does after feature extraction: meta files read with pandas
(`pd.read_csv(sep=" ", header=None)`), features pooled one template at a time (np.where per template,
np.unique per media), scores gathered 100,000 pairs at a time in float64, scores saved, scikit-learn's
roc_curve, the nearest-FPR table, the ROC plotted with matplotlib. Features and faceness come from the
same .npz that `eval_ijbc.py --features` reads (np.load). Imports only what that needs (no PyTorch), so
the baseline is not charged for ours. Writes `<result-dir>/ijbc.npy`, `ijbc.pdf` and `ijbc_result.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import auc, roc_curve
from sklearn.preprocessing import normalize

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def read_template_media(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(path, sep=" ", header=None).values
    return table[:, 1].astype(int), table[:, 2].astype(int)


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = pd.read_csv(path, sep=" ", header=None).values
    return table[:, 0].astype(int), table[:, 1].astype(int), table[:, 2].astype(int)


def template_features(image_feats: np.ndarray, templates: np.ndarray,
                      medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One template at a time: find its images, average each media, sum the media, then L2-normalise."""
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), image_feats.shape[1]))
    for row, template in enumerate(unique_templates):
        (members,) = np.where(templates == template)
        member_feats, member_medias = image_feats[members], medias[members]
        unique_medias, media_counts = np.unique(member_medias, return_counts=True)
        media_feats = []
        for media, count in zip(unique_medias, media_counts):
            (in_media,) = np.where(member_medias == media)
            media_feats.append(member_feats[in_media] if count == 1
                               else np.mean(member_feats[in_media], axis=0, keepdims=True))
        template_feats[row] = np.sum(np.array(media_feats), axis=0)
    return unique_templates, normalize(template_feats)


def pair_scores(template_feats: np.ndarray, unique_templates: np.ndarray, first: np.ndarray,
                second: np.ndarray, batch_size: int = 100_000) -> np.ndarray:
    """Look-up table from template id to row, then gathered dot products in batches of pairs."""
    row_of = np.zeros(unique_templates.max() + 1, dtype=np.int64)
    row_of[unique_templates] = np.arange(len(unique_templates))
    scores = np.zeros(len(first))
    for start in range(0, len(first), batch_size):
        feats_a = template_feats[row_of[first[start:start + batch_size]]]  # [b, D]
        feats_b = template_feats[row_of[second[start:start + batch_size]]]  # [b, D]
        scores[start:start + batch_size] = np.sum(feats_a * feats_b, axis=-1)
    return scores


def nearest_table(fpr: np.ndarray, tpr: np.ndarray) -> dict[str, float]:
    """TAR % at the ROC point nearest each FAR, scanning the flipped ROC as released."""
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    table = {}
    for far in FARS:
        _, nearest = min(zip(abs(fpr - far), range(len(fpr))))
        table[str(far)] = float(tpr[nearest]) * 100
    return table


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    plt.plot(fpr, tpr, lw=1, label=f"released (AUC = {auc(fpr, tpr) * 100:.4f} %)")
    plt.xlim([1e-6, 1])
    plt.ylim([0.0, 1.0])
    plt.grid(linestyle="--", linewidth=1)
    plt.xscale("log")
    plt.xlabel("False Positive Rate")
    plt.ylabel("True Positive Rate")
    plt.legend(loc="lower right")
    figure.savefig(path)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--image-path", required=True)
    parser.add_argument("--result-dir", required=True)
    args = parser.parse_args(argv)
    meta, out = Path(args.image_path) / "meta", Path(args.result_dir)
    out.mkdir(parents=True, exist_ok=True)
    templates, medias = read_template_media(meta / "ijbc_face_tid_mid.txt")
    first, second, labels = read_pairs(meta / "ijbc_template_pair_label.txt")
    with np.load(args.features) as saved:
        feats, feats_flip, faceness = saved["feats"], saved["feats_flip"], saved["faceness"]
    image_feats = (feats + feats_flip) * faceness[:, None]
    del feats, feats_flip
    unique_templates, template_feats = template_features(image_feats, templates, medias)
    del image_feats
    scores = pair_scores(template_feats, unique_templates, first, second)
    np.save(out / "ijbc.npy", scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    plot_roc(fpr, tpr, out / "ijbc.pdf")
    (out / "ijbc_result.json").write_text(json.dumps(nearest_table(fpr, tpr), indent=2) + "\n")


if __name__ == "__main__":
    main()
