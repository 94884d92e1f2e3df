"""IJB protocol math against direct per-template loops and brute force, and the meta parsers' errors."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from eval import ijb
from eval.ijb_data import (
    MetaPaths,
    check_images_exist,
    read_identification_csv,
    read_image_meta,
    read_landmarks,
    read_pairs,
    read_template_media,
)
from eval.ijb_images import AlignedFaces
from utils.errors import UserError


def _random_meta(seed: int, num_images: int = 300, num_templates: int = 40, dim: int = 16):
    rng = np.random.default_rng(seed)
    templates = rng.choice(rng.choice(10_000, num_templates, replace=False), num_images)
    medias = rng.integers(0, 25, num_images)  # media ids shared across templates, as in IJB-C
    feats = rng.standard_normal((num_images, dim)).astype(np.float32)
    feats_flip = rng.standard_normal((num_images, dim)).astype(np.float32)
    faceness = rng.uniform(0.1, 1.0, num_images).astype(np.float32)
    return feats, feats_flip, faceness, templates, medias


def _loop_template_features(feats, feats_flip, faceness, templates, medias, normalize_images):
    """The released algorithm, one template and one media at a time."""
    image_feats = feats.astype(np.float64) + (0 if feats_flip is None else feats_flip)
    if normalize_images:
        image_feats = image_feats / np.linalg.norm(image_feats, axis=1, keepdims=True)
    if faceness is not None:
        image_feats = image_feats * faceness[:, None]
    result = {}
    for template in np.unique(templates):
        (members,) = np.where(templates == template)
        media_feats = [image_feats[members[medias[members] == media]].mean(axis=0)
                       for media in np.unique(medias[members])]
        pooled = np.sum(media_feats, axis=0)
        result[int(template)] = pooled / np.linalg.norm(pooled)
    return result


@pytest.mark.parametrize("flip, detector, normalize_images", [(True, True, False), (False, True, False),
                                                        (True, False, True), (False, False, False)])
def test_template_features_equal_a_per_template_loop(flip, detector, normalize_images):
    feats, feats_flip, faceness, templates, medias = _random_meta(0)
    feats_flip = feats_flip if flip else None
    faceness = faceness if detector else None
    ids, pooled = ijb.template_features(feats, templates, medias, feats_flip, faceness, normalize_images)
    expected = _loop_template_features(feats, feats_flip, faceness, templates, medias, normalize_images)
    assert list(ids) == sorted(expected)
    np.testing.assert_allclose(pooled, np.stack([expected[t] for t in ids]), atol=1e-6, rtol=0)


def test_template_features_do_not_depend_on_the_block_size(monkeypatch):
    feats, feats_flip, faceness, templates, medias = _random_meta(1)
    _, whole = ijb.template_features(feats, templates, medias, feats_flip, faceness)
    monkeypatch.setattr(ijb, "POOL_BLOCK_ELEMENTS", 7 * feats.shape[1])  # 7 images per block
    _, blocked = ijb.template_features(feats, templates, medias, feats_flip, faceness)
    np.testing.assert_allclose(blocked, whole, atol=1e-12)


def test_template_features_leave_callers_arrays_unchanged():
    feats, feats_flip, faceness, templates, medias = _random_meta(2)
    copies = [a.copy() for a in (feats, feats_flip, faceness, templates, medias)]
    ijb.template_features(feats, templates, medias, feats_flip, faceness, normalize_images=True)
    for before, after in zip(copies, (feats, feats_flip, faceness, templates, medias)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("method", ["dense", "triangle", "gather", "auto"])
def test_pair_scores_equal_a_direct_loop(method, monkeypatch):
    monkeypatch.setattr(ijb, "BLOCK_ELEMENTS", 64 * 16)  # several blocks in both methods
    feats, feats_flip, faceness, templates, medias = _random_meta(3)
    ids, pooled = ijb.template_features(feats, templates, medias, feats_flip, faceness)
    per_template = _loop_template_features(feats, feats_flip, faceness, templates, medias, False)
    rng = np.random.default_rng(4)
    first, second = rng.choice(ids, 500), rng.choice(ids, 500)
    rows_a, found_a = ijb.template_rows_of(ids, first)
    rows_b, found_b = ijb.template_rows_of(ids, second)
    assert found_a.all() and found_b.all()
    scores = ijb.pair_scores(pooled, rows_a, rows_b, method=method)
    expected = [float(per_template[a] @ per_template[b]) for a, b in zip(first, second)]
    np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=0)


def _gallery_probe_rows(num_gallery, num_probes, num_pairs, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_gallery, num_pairs), rng.integers(num_gallery, num_gallery + num_probes, num_pairs)


def test_pair_costs_count_the_block_products_each_method_computes(monkeypatch):
    monkeypatch.setattr(ijb, "BLOCK_ELEMENTS", 40 * 7)  # blocks of 7 rows of 40 columns
    rows_a, rows_b = _gallery_probe_rows(30, 40, 2000)
    costs = ijb.pair_costs(70, 16, rows_a, rows_b)
    assert costs["dense"] == 30 * 40 * 16
    assert costs["gather"] == 2000 * 16 * ijb.GATHER_COST
    rng = np.random.default_rng(1)
    rows_a, rows_b = rng.integers(0, 70, 5000), rng.integers(0, 70, 5000)  # pairs from all templates
    costs = ijb.pair_costs(70, 16, rows_a, rows_b)
    # a triangle computes, per block of 7 used lower rows, the used higher rows from the block's first row on
    lower = sorted(set(np.minimum(rows_a, rows_b).tolist()))
    higher = sorted(set(np.maximum(rows_a, rows_b).tolist()))
    rows_per_block = 40 * 7 // len(higher)
    expected = sum(len(lower[start:start + rows_per_block]) * sum(h >= lower[start] for h in higher)
                   for start in range(0, len(lower), rows_per_block)) * 16
    assert costs["triangle"] == expected < 0.6 * costs["dense"]


@pytest.mark.parametrize(("rows", "cheapest"), [
    (_gallery_probe_rows(30, 40, 2000), "dense"),  # a dense gallery x probe block
    (_gallery_probe_rows(3000, 4000, 2000), "gather"),  # few pairs among many templates
    (tuple(np.random.default_rng(2).integers(0, 200, (2, 20_000))), "triangle"),  # all templates
])
def test_auto_scores_with_the_cheapest_method(rows, cheapest, monkeypatch):
    feats = np.random.default_rng(3).standard_normal((7000, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    costs = ijb.pair_costs(len(feats), 16, *rows)
    assert min(costs, key=costs.get) == cheapest
    used = []
    for name, function in (("_block_scores", ijb._block_scores), ("_gathered_scores", ijb._gathered_scores)):
        monkeypatch.setattr(ijb, name, lambda *args, name=name, function=function, **kwargs: (
            used.append((name, kwargs.get("triangle"))), function(*args, **kwargs))[1])
    scores = ijb.pair_scores(feats, *rows)
    assert used == [{"dense": ("_block_scores", False), "triangle": ("_block_scores", True),
                     "gather": ("_gathered_scores", None)}[cheapest]]
    np.testing.assert_allclose(scores, np.einsum("pd,pd->p", feats[rows[0]], feats[rows[1]]), atol=1e-6)


@pytest.mark.parametrize("table_limit", [2**26, 0])  # look-up table, binary search
def test_template_rows_of_reports_unknown_ids(table_limit, monkeypatch):
    monkeypatch.setattr(ijb, "LOOKUP_TABLE_LIMIT", table_limit)
    rows, found = ijb.template_rows_of(np.array([3, 7, 9]), np.array([7, 8, 9, 100, 1, -5, 3]))
    assert found.tolist() == [True, False, True, False, False, False, True]
    assert rows[found].tolist() == [1, 2, 0]


def _scan_nearest(fpr, tpr, far):
    """Walk the ROC; on equal distance the later point wins (the released scan of the flipped ROC)."""
    best = 0
    for point in range(len(fpr)):
        if abs(fpr[point] - far) <= abs(fpr[best] - far):
            best = point
    return tpr[best] * 100


def _released_nearest(fpr, tpr, far):
    """The released code, verbatim in spirit: min over (distance, index) of the flipped ROC."""
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, index = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[index] * 100


def _scan_at_or_below(fpr, tpr, far):
    best = 0.0
    for point in range(len(fpr)):
        if fpr[point] <= far:
            best = max(best, tpr[point])
    return best * 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_rules_equal_a_direct_scan_of_the_roc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200_000) < 0.01
    scores = np.round(rng.normal(labels * 2.5, 1.0), 2)  # rounding makes tied scores and vertical steps
    fpr, tpr = ijb.roc(labels, scores)
    nearest = ijb.tar_at_far(fpr, tpr, rule="nearest")
    below = ijb.tar_at_far(fpr, tpr, rule="interpolated")
    assert list(nearest) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    for far in ijb.FARS:
        key = ijb.far_key(far)
        assert nearest[key] == pytest.approx(_scan_nearest(fpr, tpr, far), abs=1e-12)
        assert nearest[key] == pytest.approx(_released_nearest(fpr, tpr, far), abs=1e-12)
        assert below[key] == pytest.approx(_scan_at_or_below(fpr, tpr, far), abs=1e-12)


def test_nearest_rule_takes_the_highest_tpr_of_a_vertical_step():
    fpr = np.array([0.0, 0.1, 0.1, 0.3, 1.0])
    tpr = np.array([0.0, 0.2, 0.6, 0.7, 1.0])
    assert ijb.tar_at_far(fpr, tpr, fars=(0.1,))["0.1"] == pytest.approx(60.0)
    assert ijb.tar_at_far(fpr, tpr, fars=(0.25,), rule="interpolated")["0.25"] == pytest.approx(60.0)


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("decimals", [None, 1, 2])  # rounding makes ties and vertical and straight runs
def test_roc_equals_scikit_learns_roc_curve(seed, decimals):
    rng = np.random.default_rng(seed)
    labels, scores = rng.random(5000) < 0.3, rng.normal(size=5000)
    if decimals is not None:
        scores = np.round(scores, decimals)
    fpr, tpr, _ = roc_curve(labels, scores)
    got = ijb.roc(labels.astype(np.int64), scores)
    np.testing.assert_array_equal(got[0], fpr)
    np.testing.assert_array_equal(got[1], tpr)


def _brute_identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects, ranks, fpirs):
    """NIST-style search, one probe at a time: best score per gallery subject, the candidate list sorted
    by score with the mate after every subject tied with it (ties count against the model), the rank read
    off that list; FPIR thresholds by trying each non-mated score."""
    gallery_ids = sorted(set(gallery_subjects.tolist()))
    mated_ranks, mated_scores, non_mated_best = [], [], []
    for feat, subject in zip(probe_feats, probe_subjects):
        per_subject = {s: max(float(feat @ g) for g, gs in zip(gallery_feats, gallery_subjects) if gs == s)
                       for s in gallery_ids}
        candidates = sorted(per_subject, key=lambda s: (-per_subject[s], s == subject))
        if subject in per_subject:
            mated_ranks.append(candidates.index(subject))
            mated_scores.append(per_subject[subject])
        else:
            non_mated_best.append(per_subject[candidates[0]])
    result = {f"rank{k}": 100.0 * np.mean([r < k for r in mated_ranks]) for k in ranks}
    for fpir in fpirs:
        # the smallest non-mated score (or -inf) at which at most fpir of the non-mated exceed it
        options = sorted([*non_mated_best, -np.inf])
        threshold = next(t for t in options if np.mean([s > t for s in non_mated_best]) <= fpir)
        result[f"tpir@fpir={fpir}"] = 100.0 * np.mean(
            [r == 0 and s > threshold for r, s in zip(mated_ranks, mated_scores)])
    return result


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_identification_equals_brute_force(seed, monkeypatch):
    monkeypatch.setattr(ijb, "BLOCK_ELEMENTS", 100)  # probes in several blocks
    rng = np.random.default_rng(seed)
    num_subjects, dim = 30, 8
    centres = rng.standard_normal((num_subjects, dim))
    gallery_subjects = np.concatenate([np.arange(20), rng.choice(20, 6)])  # some subjects twice
    gallery = _unit(centres[gallery_subjects] + 0.8 * rng.standard_normal((len(gallery_subjects), dim)))
    probe_subjects = rng.choice(num_subjects, 150)  # subjects 20..29 are not in the gallery
    probes = _unit(centres[probe_subjects] + 0.8 * rng.standard_normal((150, dim)))
    got = ijb.identification(probes, probe_subjects, gallery, gallery_subjects,
                             ranks=(1, 5, 10), fpirs=(0.01, 0.1, 0.5))
    expected = _brute_identification(probes, probe_subjects, gallery, gallery_subjects, (1, 5, 10),
                                     (0.01, 0.1, 0.5))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_mated"] + got["num_non_mated"] == 150
    assert 0 < got["tpir@fpir=0.1"] < got["rank1"] < got["rank10"] <= 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identification_with_forced_ties_equals_brute_force(seed, monkeypatch):
    """Features in {-1, 0, 1}^3 give integer scores in -3..3, so most probes tie with some subject; the
    released count of strictly higher subjects put a probe tied with its mate at rank 1."""
    monkeypatch.setattr(ijb, "BLOCK_ELEMENTS", 100)
    rng = np.random.default_rng(seed)
    gallery_subjects = np.concatenate([np.arange(12), rng.choice(12, 8)])  # some subjects twice
    gallery = rng.integers(-1, 2, (len(gallery_subjects), 3)).astype(np.float64)
    probe_subjects = rng.choice(18, 200)  # subjects 12..17 are not in the gallery
    probes = rng.integers(-1, 2, (200, 3)).astype(np.float64)
    ranks, fpirs = (1, 2, 5, 10), (0.01, 0.1, 0.5)
    got = ijb.identification(probes, probe_subjects, gallery, gallery_subjects, ranks=ranks, fpirs=fpirs)
    expected = _brute_identification(probes, probe_subjects, gallery, gallery_subjects, ranks, fpirs)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < got["rank1"] < got["rank5"] < 100


def test_probe_tied_with_every_gallery_subject_is_found_last():
    """The issue's case: a probe scoring the same (0) for all five subjects is at rank 5, not rank 1."""
    gallery = np.eye(6)[1:]  # five subjects, all orthogonal to the probe
    probes = np.eye(6)[[0, 0]]
    result = ijb.identification(probes, np.array([13, 99]), gallery, np.arange(10, 15),
                                ranks=(1, 4, 5), fpirs=(0.5,))
    assert (result["rank1"], result["rank4"], result["rank5"]) == (0.0, 0.0, 100.0)
    assert result["tpir@fpir=0.5"] == 0.0


def test_identification_without_non_mated_probes_gives_nan_tpir():
    feats = _unit(np.eye(4) + 0.1)
    result = ijb.identification(feats, np.arange(4), feats, np.arange(4))
    assert result["rank1"] == 100.0 and np.isnan(result["tpir@fpir=0.01"])


# ---- meta files ----

def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD_LANDMARKS = ["1.jpg 46.0 62.0 87.7 60.3 68.8 77.6 52.1 99.8 86.4 98.6 0.999",
                  "2.jpg 40.0 60.0 80.0 60.0 60.0 80.0 45.0 95.0 75.0 95.0 0.5"]


def test_read_landmarks_parses_names_points_and_scores(tmp_path):
    names, landmarks, faceness = read_landmarks(_write(tmp_path / "lm.txt", GOOD_LANDMARKS))
    assert names == ["1.jpg", "2.jpg"]
    assert landmarks.shape == (2, 5, 2) and landmarks[0, 1].tolist() == pytest.approx([87.7, 60.3])
    assert faceness.tolist() == pytest.approx([0.999, 0.5])


@pytest.mark.parametrize("bad", ["3.jpg 1 2 3 4 5 6 7 8 9 10", "3.jpg 1 2 3 4 5 6 7 8 9 x 0.5",
                                 "3.jpg 1 2 3 4 5 6 7 8 9 nan 0.5", "3.jpg 1 2 3 4 5 6 7 8 9 10 inf",
                                 "3.jpg 1 2 3 4 5 6 7 8 9 10 0.5 7"])
def test_malformed_landmark_line_names_file_and_line(tmp_path, bad):
    path = _write(tmp_path / "lm.txt", [*GOOD_LANDMARKS, "", bad])
    with pytest.raises(UserError, match=r"lm\.txt, line 4: expected an image name, 10 landmark"):
        read_landmarks(path)


def test_meta_readers_take_any_whitespace_between_fields(tmp_path):
    """The vectorised reader splits like str.split: tabs, repeated and leading spaces, blank lines."""
    spaced = ["  " + line.replace(" ", "\t", 3).replace(" ", "   ") for line in GOOD_LANDMARKS]
    got = read_landmarks(_write(tmp_path / "spaced.txt", [spaced[0], "", spaced[1]]))
    expected = read_landmarks(_write(tmp_path / "lm.txt", GOOD_LANDMARKS))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[2], expected[2])
    first, second, labels = read_pairs(_write(tmp_path / "p.txt", ["1\t11065  1", "", " 1 11066 0 "]))
    assert first.tolist() == [1, 1] and second.tolist() == [11065, 11066] and labels.tolist() == [1, 0]


@pytest.mark.parametrize("bad", ["3.jpg 5", "3.jpg 5 media"])
def test_malformed_template_media_line_names_file_and_line(tmp_path, bad):
    path = _write(tmp_path / "tm.txt", ["1.jpg 1 10", "2.jpg 1 11", bad])
    with pytest.raises(UserError, match=r"tm\.txt, line 3: expected an image name, a template id"):
        read_template_media(path)


def test_read_pairs_parses_three_integer_columns(tmp_path):
    first, second, labels = read_pairs(_write(tmp_path / "p.txt", ["1 11065 1", "1 11066 0"]))
    assert first.tolist() == [1, 1] and second.tolist() == [11065, 11066] and labels.tolist() == [1, 0]


@pytest.mark.parametrize("bad", ["1 2", "1 2 x", "1 2 3 4", "1 2 2"])
def test_malformed_pair_line_names_file_and_line(tmp_path, bad):
    path = _write(tmp_path / "p.txt", ["1 11065 1", "1 11066 0", bad, "4 5 1"])
    with pytest.raises(UserError, match=r"p\.txt, line 3: expected three integers"):
        read_pairs(path)


def test_empty_pair_file_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no readable pairs"):
        read_pairs(_write(tmp_path / "p.txt", []))


def test_read_identification_csv_gives_one_row_per_template(tmp_path):
    path = _write(tmp_path / "g.csv", ["TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID",
                                       "5,100,img/1.jpg,1", "5,100,img/2.jpg,2", "9,101,frames/3.png,3"])
    templates, subjects = read_identification_csv(path)
    assert templates.tolist() == [5, 9] and subjects.tolist() == [100, 101]


@pytest.mark.parametrize("lines, message", [
    (["ID,SUBJECT,FILENAME", "5,100,a.jpg"], r"g\.csv, line 1: expected the header"),
    (["TEMPLATE_ID,SUBJECT_ID,FILENAME", "5,100,a.jpg", "5,abc,b.jpg"], r"g\.csv, line 3: expected"),
    (["TEMPLATE_ID,SUBJECT_ID,FILENAME", "5,100,a.jpg", "5,101,b.jpg"], r"g\.csv, line 3: template 5"),
])
def test_malformed_identification_csv_names_file_and_line(tmp_path, lines, message):
    with pytest.raises(UserError, match=message):
        read_identification_csv(_write(tmp_path / "g.csv", lines))


def test_meta_files_listing_different_images_are_an_error(tmp_path):
    paths = MetaPaths.of(tmp_path, "IJBC")
    _write(paths.landmarks, GOOD_LANDMARKS)
    _write(paths.media, ["1.jpg 1 10", "3.jpg 1 11"])
    with pytest.raises(UserError, match="image 2 is '3.jpg'"):
        read_image_meta(paths)


def test_missing_meta_file_is_an_error(tmp_path):
    with pytest.raises(UserError, match="ijbb_name_5pts_score.txt' does not exist"):
        read_image_meta(MetaPaths.of(tmp_path, "IJBB"))


def test_missing_image_names_file_and_line(tmp_path):
    paths = MetaPaths.of(tmp_path, "IJBC")
    _write(paths.landmarks, GOOD_LANDMARKS)
    _write(paths.media, ["1.jpg 1 10", "2.jpg 1 11"])
    (tmp_path / "loose_crop").mkdir()
    (tmp_path / "loose_crop" / "1.jpg").write_bytes(b"")
    meta = read_image_meta(paths)
    with pytest.raises(UserError, match=r"2\.jpg' listed on line 2 of .*ijbc_name_5pts_score\.txt"):
        check_images_exist(tmp_path / "loose_crop", meta)


def test_undecodable_image_is_flagged_not_raised(tmp_path):
    (tmp_path / "1.jpg").write_bytes(b"not a jpeg")
    image, index, ok = AlignedFaces(tmp_path, ["1.jpg"], np.zeros((1, 5, 2), np.float32))[0]
    assert not ok and index == 0 and image.shape == (3, 112, 112)
