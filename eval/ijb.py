"""IJB-B / IJB-C protocol math: image -> media -> template features, pair scores, TAR@FAR, 1:N search.

Follows the released evaluation (see "IJB-C 1:1 protocol" in the method notes): the image feature is the
embedding plus the embedding of the mirrored image, optionally L2-normalised ("norm score") and
multiplied by the detector's faceness score; images of one media within a template are averaged, the
media features summed and the template feature L2-normalised; a pair's score is the cosine of its two
templates. Everything is vectorised and works in bounded memory at full IJB-C size (469,375 images,
23,124 templates, 15,658,489 pairs). Legend: N images, T templates, D embedding size, P pairs.
"""

from __future__ import annotations

import numpy as np

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# How a TAR is read off the ROC for a target FAR.
TABLE_RULES = {
    "nearest": "ROC point with the FPR nearest the target (released rule)",
    "interpolated": "highest TPR at an FPR at or below the target",
}
RANKS = (1, 5, 10)
FPIRS = (0.01, 0.1)
RANK_RULE = ("rank = 1 + the number of other gallery subjects scoring at least the mate's score (ties count "
             "against the model); TPIR@FPIR counts a mated probe only at rank 1 and above the threshold")
# Elements of a float64 scratch block (128 MiB); bounds the memory of pooling and scoring.
BLOCK_ELEMENTS = 2**24
# Images per pooling block times D; the float64 block (8 MiB) stays in cache-friendly reach.
POOL_BLOCK_ELEMENTS = 2**20
# A multiply-add of a row-wise dot product over gathered rows costs about this many inside a BLAS product
# (float32; 30x to 90x measured on a busy 2-core machine, where gathering is memory-bound).
GATHER_COST = 50
# Template ids below this use a direct look-up table (8 bytes per possible id).
LOOKUP_TABLE_LIMIT = 2**26


def far_key(far: float) -> str:
    """The key of a FAR in the result json: "1e-06", "1e-05", "0.0001", ..., "0.1" (Python's repr)."""
    return str(far)


def _media_groups(templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template ids [T] sorted, template row of each image [N], images in the image's media group [N]).

    A media group is the set of images that share a template and a media id.
    """
    template_ids, template_rows = np.unique(templates, return_inverse=True)  # [T], [N]
    _, media_rows = np.unique(medias, return_inverse=True)  # [N]
    group_key = template_rows.astype(np.int64) * (int(media_rows.max()) + 1) + media_rows  # [N]
    _, group_rows, group_sizes = np.unique(group_key, return_inverse=True, return_counts=True)
    return template_ids, template_rows, group_sizes[group_rows]


def template_features(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      feats_flip: np.ndarray | None = None, faceness: np.ndarray | None = None,
                      normalize_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pool image embeddings into L2-normalised template features.

    Args:
        feats: [N, D] embeddings of the aligned images.
        templates, medias: [N] template and media id of each image.
        feats_flip: [N, D] embeddings of the mirrored images (flip test), added to `feats`.
        faceness: [N] detector scores that multiply each image feature (detector score), or None.
        normalize_images: L2-normalise each image feature before the faceness weight and pooling (the
            released use_norm_score=False).
    Returns:
        (template ids [T] ascending, features [T, D] float64 with unit norm; a template whose pooled
        feature is zero stays zero).

    The template feature is sum over media of the mean over the media's images, i.e. a weighted sum of
    image features with weight faceness / (|f| if normalize_images) / (images in the media), summed per
    template in image blocks, in float64.
    """
    num_images, dim = feats.shape
    template_ids, template_rows, group_sizes = _media_groups(templates, medias)
    pooled = np.zeros((len(template_ids), dim))  # [T, D]
    block = max(1, POOL_BLOCK_ELEMENTS // dim)
    buffer = np.empty((min(block, num_images), dim))  # reused: fresh blocks would cost page faults
    for start in range(0, num_images, block):
        stop = min(start + block, num_images)
        image_feats = buffer[:stop - start]  # [b, D] float64
        np.copyto(image_feats, feats[start:stop])
        if feats_flip is not None:
            image_feats += feats_flip[start:stop]
        weights = 1.0 / group_sizes[start:stop]  # [b]
        if normalize_images:
            weights = weights / np.linalg.norm(image_feats, axis=1)
        if faceness is not None:
            weights = weights * faceness[start:stop]
        order = np.argsort(template_rows[start:stop], kind="stable")  # [b] block images by template
        block_rows = template_rows[start:stop][order]  # [b] ascending
        firsts = np.flatnonzero(np.r_[True, block_rows[1:] != block_rows[:-1]])  # [r] first image per template
        image_feats *= weights[:, None]
        pooled[block_rows[firsts]] += np.add.reduceat(image_feats[order], firsts)  # [r, D] sums per template
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)  # [T, 1]
    return template_ids, np.divide(pooled, norms, out=np.zeros_like(pooled), where=norms > 0)


def template_rows_of(template_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `wanted` ids in the ascending `template_ids`: (rows [M], found [M] bool).

    IJB ids are small non-negative integers, so a direct look-up table (a few MB) replaces a binary
    search per pair; other ids fall back to np.searchsorted.
    """
    largest = int(template_ids[-1])
    if template_ids[0] >= 0 and largest < LOOKUP_TABLE_LIMIT:
        lookup = np.full(largest + 2, -1, dtype=np.int64)  # the last entry stands for "out of range"
        lookup[template_ids] = np.arange(len(template_ids))
        rows = lookup[np.where((wanted >= 0) & (wanted <= largest), wanted, largest + 1)]
        found = rows >= 0
        return np.where(found, rows, 0), found
    rows = np.searchsorted(template_ids, wanted).clip(max=len(template_ids) - 1)
    return rows, template_ids[rows] == wanted


def _used_rows(rows: np.ndarray, num_templates: int) -> np.ndarray:
    """The distinct template rows in `rows`, ascending."""
    return np.flatnonzero(np.bincount(rows, minlength=num_templates))


def _block_plan(used_a: np.ndarray, used_b: np.ndarray, triangle: bool) -> tuple[int, np.ndarray]:
    """(rows of used_a per block, first column of used_b each block needs [blocks]).

    In a triangle the pairs have row_a <= row_b, so a block needs only the used_b rows from its first row on.
    """
    rows_per_block = max(1, BLOCK_ELEMENTS // len(used_b))
    starts = used_a[::rows_per_block]  # [blocks] first template row of each block
    first_columns = np.searchsorted(used_b, starts) if triangle else np.zeros(len(starts), dtype=np.int64)
    return rows_per_block, first_columns


def _block_cost(used_a: np.ndarray, used_b: np.ndarray, dim: int, triangle: bool) -> int:
    """Multiply-adds of the block products (used rows x needed columns x D)."""
    rows_per_block, first_columns = _block_plan(used_a, used_b, triangle)
    block_rows = np.minimum(rows_per_block, len(used_a) - rows_per_block * np.arange(len(first_columns)))
    return int(np.sum(block_rows * (len(used_b) - first_columns))) * dim


def _block_scores(feats: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, triangle: bool) -> np.ndarray:
    """Scores read from blocks of the product feats[used_a] @ feats[used_b]^T over the templates the pairs use.

    IJB-C's gallery x probe pairs cover a fifth of that matrix, so one BLAS product over it beats gathering
    two D-vectors per pair many times over. With `triangle` the pairs are first put in (lower row, higher
    row) order, so only the blocks on and above the diagonal are computed (half the work when the pairs
    are drawn from all templates).
    """
    if triangle:
        rows_a, rows_b = np.minimum(rows_a, rows_b), np.maximum(rows_a, rows_b)  # [P] each
    num_templates = len(feats)
    used_a, used_b = _used_rows(rows_a, num_templates), _used_rows(rows_b, num_templates)  # [A], [B]
    local_a = np.empty(num_templates, dtype=np.int32)  # int32: P-sized index arrays at half the memory
    local_a[used_a] = np.arange(len(used_a))
    local_b = np.empty(num_templates, dtype=np.int32)
    local_b[used_b] = np.arange(len(used_b))
    pair_a, pair_b = local_a[rows_a], local_b[rows_b]  # [P] positions in used_a / used_b
    rows_per_block, first_columns = _block_plan(used_a, used_b, triangle)
    block_of_pair = (pair_a // rows_per_block).astype(np.int16 if len(first_columns) < 2**15 else np.int32)
    order = np.argsort(block_of_pair, kind="stable")  # [P] pairs grouped by block (radix sort for int16)
    ends = np.cumsum(np.bincount(block_of_pair, minlength=len(first_columns)))  # [blocks]
    feats_b_t = np.ascontiguousarray(feats[used_b].T)  # [D, B]
    scores = np.empty(len(rows_a))
    buffer = np.empty(min(rows_per_block, len(used_a)) * len(used_b), dtype=feats.dtype)  # reused
    for block, first_column in enumerate(first_columns):
        start = block * rows_per_block
        feats_a = feats[used_a[start:start + rows_per_block]]  # [rows, D]
        columns = feats_b_t[:, first_column:]  # [D, B - first_column]
        similarity = np.matmul(feats_a, columns, out=buffer[:len(feats_a) * columns.shape[1]].reshape(
            len(feats_a), columns.shape[1]))  # [rows, B - first_column]
        in_block = order[(ends[block - 1] if block else 0):ends[block]]  # pairs of this block
        scores[in_block] = similarity[pair_a[in_block] - start, pair_b[in_block] - first_column]
    return scores


def _gathered_scores(feats: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Scores as row-wise dot products of gathered features, in pair blocks (for sparse pair sets)."""
    scores = np.empty(len(rows_a))
    block = max(1, BLOCK_ELEMENTS // feats.shape[1])
    for start in range(0, len(rows_a), block):
        feats_a = feats[rows_a[start:start + block]]  # [b, D]
        feats_b = feats[rows_b[start:start + block]]  # [b, D]
        scores[start:start + block] = np.einsum("pd,pd->p", feats_a, feats_b)
    return scores


def pair_costs(num_templates: int, dim: int, rows_a: np.ndarray, rows_b: np.ndarray) -> dict[str, float]:
    """Estimated cost of each scoring method, in BLAS multiply-adds: "dense" used_a x used_b x D, "triangle"
    the same over the blocks a triangle needs, "gather" P x D x GATHER_COST."""
    low, high = np.minimum(rows_a, rows_b), np.maximum(rows_a, rows_b)
    return {
        "dense": _block_cost(_used_rows(rows_a, num_templates), _used_rows(rows_b, num_templates), dim, False),
        "triangle": _block_cost(_used_rows(low, num_templates), _used_rows(high, num_templates), dim, True),
        "gather": len(rows_a) * dim * GATHER_COST,
    }


def pair_scores(template_feats: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
                method: str = "auto") -> np.ndarray:
    """Cosine score of each pair: template_feats[rows_a[p]] . template_feats[rows_b[p]], [P] float64.

    Args:
        template_feats: [T, D] unit-norm template features.
        rows_a, rows_b: [P] rows of the pair's two templates.
        method: "dense" (blocks of the product of all used templates), "triangle" (its blocks on and above
            the diagonal, pairs ordered), "gather" (dot products of gathered rows) or "auto": the cheapest
            by `pair_costs`.
    The products run in float32 (scores within ~1e-7 of float64, the TAR table unchanged).
    """
    if method == "auto":
        costs = pair_costs(len(template_feats), template_feats.shape[1], rows_a, rows_b)
        method = min(costs, key=costs.get)
    feats = template_feats.astype(np.float32)
    if method in ("dense", "triangle"):
        return _block_scores(feats, rows_a, rows_b, triangle=method == "triangle")
    if method == "gather":
        return _gathered_scores(feats, rows_a, rows_b)
    raise ValueError(f"method must be 'auto', 'dense', 'triangle' or 'gather', got {method!r}")


def roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) equal to scikit-learn's roc_curve(labels, scores) with its defaults, as the released table uses.

    labels [P] 0/1 (or bool), scores [P]; one point per distinct score (descending), collinear
    intermediate points dropped, (0, 0) first. Counting genuine and impostor pairs per distinct score with
    np.unique (a plain sort) instead of roc_curve's stable argsort takes a fraction of the time at 15.7 M
    pairs, and leaves scikit-learn (seconds to import) out of `eval_ijbc.py --features`.
    """
    values, totals = np.unique(scores, return_counts=True)  # [V] ascending distinct scores, pairs at each
    genuine = np.bincount(np.searchsorted(values, scores[labels.astype(bool)]), minlength=len(values))  # [V]
    tps = np.cumsum(genuine[::-1])  # [V] genuine pairs at or above each distinct score, descending
    fps = np.cumsum(totals[::-1]) - tps  # [V] impostor pairs at or above it
    if len(fps) > 2:  # drop points on a straight line between their neighbours, as roc_curve does
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1]


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, fars=FARS, rule: str = "nearest") -> dict[str, float]:
    """TAR in percent for each target FAR, keyed by `far_key`.

    "nearest" (released): the ROC point whose FPR is nearest the target; among equally near points the
    last one (the released code scans the flipped ROC), which has the highest TPR. "interpolated": the
    highest TPR among points with FPR <= target (0 when there is none).
    """
    if rule not in TABLE_RULES:
        raise ValueError(f"rule must be one of {tuple(TABLE_RULES)}, got {rule!r}")
    table = {}
    for far in fars:
        if rule == "nearest":
            distance = np.abs(fpr - far)
            point = len(distance) - 1 - int(np.argmin(distance[::-1]))  # last of the nearest points
            tar = tpr[point]
        else:
            at_or_below = tpr[fpr <= far]
            tar = at_or_below.max() if len(at_or_below) else 0.0
        table[far_key(far)] = float(tar) * 100.0
    return table


def _subject_columns(gallery_subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery subjects [S] ascending, template order sorting them [G], start of each subject in it [S])."""
    order = np.argsort(gallery_subjects, kind="stable")  # [G]
    subjects, starts = np.unique(gallery_subjects[order], return_index=True)  # [S], [S]
    return subjects, order, starts


def _percent(hits: np.ndarray) -> float:
    """Percentage of True in `hits`; NaN for an empty selection."""
    return float(np.count_nonzero(hits)) * 100.0 / len(hits) if len(hits) else float("nan")


def identification(probe_feats: np.ndarray, probe_subjects: np.ndarray, gallery_feats: np.ndarray,
                   gallery_subjects: np.ndarray, ranks=RANKS, fpirs=FPIRS) -> dict[str, float]:
    """1:N search of probe templates in one gallery (unit-norm features, cosine scores).

    A probe's score for a gallery subject is its best score over that subject's gallery templates.
    Closed set (probes whose subject is in the gallery, "mated"): a probe's rank is 1 + the number of
    other gallery subjects scoring at least its mate's score, so a tie counts against the model (a probe
    tied with every subject has the last rank); rank-k accuracy is the fraction with rank <= k.
    Open set: non-mated probes' best scores set the threshold t for a false positive identification rate
    f: t is the (floor(f * num_non_mated) + 1)-th largest, so at most a fraction f of them exceeds it;
    TPIR is the fraction of mated probes at rank 1 (same tie rule) with a score above t. Values in
    percent; TPIR is NaN when no probe is non-mated. The scores must be finite (eval.guard).
    """
    subjects, order, starts = _subject_columns(gallery_subjects)
    subject_pos = np.searchsorted(subjects, probe_subjects).clip(max=len(subjects) - 1)  # [Q]
    mated = subjects[subject_pos] == probe_subjects  # [Q]
    mated_scores = np.empty(len(probe_feats))
    best_scores = np.empty(len(probe_feats))
    mated_ranks = np.empty(len(probe_feats), dtype=np.int64)
    block = max(1, BLOCK_ELEMENTS // len(gallery_subjects))
    for start in range(0, len(probe_feats), block):
        stop = min(start + block, len(probe_feats))
        similarity = probe_feats[start:stop] @ gallery_feats[order].T  # [q, G] in subject order
        by_subject = np.maximum.reduceat(similarity, starts, axis=1)  # [q, S]
        own = by_subject[np.arange(stop - start), subject_pos[start:stop]]  # [q]
        mated_scores[start:stop] = own
        best_scores[start:stop] = by_subject.max(axis=1)
        # 0-based rank: subjects scoring >= the mate's score, less the mate itself (a tie is a miss)
        mated_ranks[start:stop] = np.count_nonzero(by_subject >= own[:, None], axis=1) - 1
    result = {f"rank{k}": _percent(mated_ranks[mated] < k) for k in ranks}
    non_mated_best = np.sort(best_scores[~mated])[::-1]  # descending
    found_first = (mated_ranks == 0)[mated]
    for fpir in fpirs:
        key = f"tpir@fpir={fpir}"
        if len(non_mated_best) == 0:
            result[key] = float("nan")
            continue
        allowed = int(np.floor(fpir * len(non_mated_best)))
        threshold = non_mated_best[allowed] if allowed < len(non_mated_best) else -np.inf
        result[key] = _percent(found_first & (mated_scores[mated] > threshold))
    result["num_mated"] = int(mated.sum())
    result["num_non_mated"] = int((~mated).sum())
    return result


__all__ = ["BLOCK_ELEMENTS", "FARS", "FPIRS", "RANKS", "RANK_RULE", "TABLE_RULES", "far_key", "identification",
           "pair_costs", "pair_scores", "roc", "tar_at_far", "template_features", "template_rows_of"]
