"""eval.suite and eval/benchmarks.py: each reader against a hand-made set in its published layout (LFW's
pairs.txt header and folds, RFW's pair and landmark files, TinyFace's .mat ID lists), the metrics against
independent computations (the existing verification code, rank-k by brute force), --compare, the skip
lines and the refusal of a NaN model."""

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from backbones import get_model
from eval import benchmarks as bm
from eval import suite
from eval.verification import accuracy_from_embeddings
from tests.diverged import diverged_state_dict
from utils.binfile import save_bin
from utils.errors import UserError
from utils.opencv import cv2

DIM = 8


def _write_lfw(folder: Path, num_folds=2, per_kind=3, seed=0) -> list[str]:
    """A pairs.txt in LFW's View 2 layout over 4 people with 3 images each (tiny PNG files)."""
    rng = np.random.default_rng(seed)
    people = ["Ann_A", "Bob_B", "Cy_C", "Di_D"]
    for name in people:
        for number in (1, 2, 3):
            path = bm.lfw_image_path(folder, name, number)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    lines = [f"{num_folds}\t{per_kind}"]
    for _ in range(num_folds):
        for _ in range(per_kind):
            person = people[rng.integers(4)]
            a, b = rng.choice(3, 2, replace=False) + 1
            lines.append(f"{person}\t{a}\t{b}")
        for _ in range(per_kind):
            p, q = rng.choice(4, 2, replace=False)
            lines.append(f"{people[p]}\t{rng.integers(1, 4)}\t{people[q]}\t{rng.integers(1, 4)}")
    (folder / "pairs.txt").write_text("\n".join(lines) + "\n")
    return lines


def test_lfw_pairs_reader_follows_the_header_folds_and_kinds(tmp_path):
    lines = _write_lfw(tmp_path, num_folds=2, per_kind=3)
    pairs = bm.read_lfw_pairs(tmp_path / "pairs.txt")
    assert pairs.num_folds == 2 and len(pairs.issame) == 12
    assert pairs.issame.tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    for line, a, b in zip(lines[1:], pairs.first, pairs.second):
        fields = line.split("\t")
        expected = [(fields[0], int(fields[1])), (fields[0], int(fields[2]))] if len(fields) == 3 else \
            [(fields[0], int(fields[1])), (fields[2], int(fields[3]))]
        assert [pairs.images[a], pairs.images[b]] == expected
    assert len(set(pairs.images)) == len(pairs.images)  # each image once, embedded once


@pytest.mark.parametrize("edit, message", [
    (lambda lines: ["10", *lines[1:]], "line 1: expected the header"),
    (lambda lines: ["3\t3", *lines[1:]], "announces 3 folds"),
    (lambda lines: [lines[0], lines[4], *lines[2:4], lines[1], *lines[5:]], "line 2: fold 1 expects a same"),
    (lambda lines: [*lines[:2], "Ann_A\tx\t2", *lines[3:]], "line 3: expected 'name n1 n2'"),
])
def test_lfw_pairs_reader_names_the_bad_line(tmp_path, edit, message):
    lines = _write_lfw(tmp_path)
    (tmp_path / "pairs.txt").write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(UserError, match=message):
        bm.read_lfw_pairs(tmp_path / "pairs.txt")


def test_rfw_pair_and_landmark_files_as_released(tmp_path):
    (tmp_path / "African_pairs.txt").write_text("m.0c7mh2\t1\t3\nm.0c7mh2\t2\tm.0bx0kz\t1\n")
    (tmp_path / "African_lmk.txt").write_text(
        "./test/data/African/m.0c7mh2/m.0c7mh2_0001.jpg 0 " + " ".join(str(v) for v in range(10, 20)) + "\n")
    pairs = bm.read_rfw_pairs(tmp_path / "African_pairs.txt")
    assert pairs.images == [("m.0c7mh2", 1), ("m.0c7mh2", 3), ("m.0c7mh2", 2), ("m.0bx0kz", 1)]
    assert pairs.issame.tolist() == [True, False] and pairs.num_folds == 10
    landmarks = bm.read_landmark_file(tmp_path / "African_lmk.txt")
    np.testing.assert_array_equal(landmarks["m.0c7mh2_0001.jpg"], np.arange(10, 20).reshape(5, 2))
    (tmp_path / "bad_lmk.txt").write_text("./a.jpg 0 1 2 3\n")
    with pytest.raises(UserError, match="line 1: expected an image path and 10 landmark numbers"):
        bm.read_landmark_file(tmp_path / "bad_lmk.txt")


def _save_mat(path, names_key, ids_key, names, ids):
    cells = np.empty((len(names), 1), dtype=object)
    cells[:, 0] = names
    savemat(path, {names_key: cells, ids_key: np.asarray(ids, dtype=np.float64)[:, None]})


def test_tinyface_mat_reader_reads_savemat_cell_arrays(tmp_path):
    _save_mat(tmp_path / "probe_img_ID_pairs.mat", "probe_set", "probe_ids", ["1_1.jpg", "22_3.jpg"], [1, 22])
    names, ids = bm.read_tinyface_mat(tmp_path / "probe_img_ID_pairs.mat", "probe_set", "probe_ids")
    assert names == ["1_1.jpg", "22_3.jpg"] and ids.tolist() == [1, 22] and ids.dtype == np.int64
    with pytest.raises(UserError, match="has no 'gallery_set' and 'gallery_ids'"):
        bm.read_tinyface_mat(tmp_path / "probe_img_ID_pairs.mat", "gallery_set", "gallery_ids")


class FakeEmbedder:
    """Embeddings chosen per file by the test, in place of a network: identity direction plus noise."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def faces(self, key, faces, desc):
        plain = np.stack([self.vectors[p.name] for p in faces.paths]).astype(np.float32)
        return suite.Embeddings(plain, plain[:, ::-1].copy(), 0)


def _identity_vectors(names, identity_of, seed=0, noise=0.8):
    rng = np.random.default_rng(seed)
    centres = {}
    vectors = {}
    for name in names:
        person = identity_of(name)
        centre = centres.setdefault(person, rng.normal(size=DIM))
        vectors[name] = centre + noise * rng.normal(size=DIM)
    return vectors


def _args(**overrides):
    base = dict(flip=True, norm_score=True, detector_score=True, table_rule="nearest", result_dir=".")
    return argparse.Namespace(**{**base, **overrides})


def test_lfw_pairs_accuracy_is_the_verification_code_on_the_pairs_in_file_order(tmp_path):
    lines = _write_lfw(tmp_path / "lfw", num_folds=10, per_kind=2, seed=1)
    names = [p.name for p in (tmp_path / "lfw").glob("*/*.jpg")]
    vectors = _identity_vectors(names, lambda name: name.rsplit("_", 1)[0])
    found = bm.find_lfw_folder(tmp_path)[0]
    result = suite.run_lfw_pairs(found, bm.BENCHMARKS[1], FakeEmbedder(vectors), _args())
    plain, issame = [], []
    for line in lines[1:]:  # independent: walk pairs.txt and build the .bin order by hand
        f = line.split("\t")
        name_a, number_a, name_b, number_b = (f[0], f[1], f[0], f[2]) if len(f) == 3 else f
        plain += [vectors[f"{name_a}_{int(number_a):04d}.jpg"], vectors[f"{name_b}_{int(number_b):04d}.jpg"]]
        issame.append(len(f) == 3)
    plain = np.asarray(plain, dtype=np.float32)
    expected = accuracy_from_embeddings(plain, plain[:, ::-1].copy(), np.asarray(issame))
    assert result["metrics"]["accuracy"] == pytest.approx(expected["accuracy"] * 100)
    assert result["metrics"]["std"] == pytest.approx(expected["std"] * 100)
    assert result["sizes"] == {"pairs": 40, "images": result["sizes"]["images"], "folds": 10, "centred_crops": 0}


def _write_tinyface(root: Path, rng) -> dict[str, int]:
    """Testing_Set with 5 matched identities (1 probe, 2 gallery images each) and 6 distractors."""
    testing = root / "tinyface" / "Testing_Set"
    identity = {}
    probes, gallery = [], []
    for person in range(1, 6):
        probes.append(f"{person}_p.jpg")
        gallery += [f"{person}_g1.jpg", f"{person}_g2.jpg"]
    distractors = [f"d{k}.jpg" for k in range(6)]
    for part, names in zip(bm.TINYFACE_PARTS, (probes, gallery, distractors)):
        (testing / part).mkdir(parents=True)
        for name in names:
            cv2.imwrite(str(testing / part / name), rng.integers(0, 255, (16, 14, 3), dtype=np.uint8))
            identity[name] = int(name.split("_")[0]) if not name.startswith("d") else -int(name[1]) - 1
    _save_mat(testing / "probe_img_ID_pairs.mat", "probe_set", "probe_ids", probes, [identity[n] for n in probes])
    _save_mat(testing / "gallery_match_img_ID_pairs.mat", "gallery_set", "gallery_ids", gallery,
              [identity[n] for n in gallery])
    return identity


def test_tinyface_rank_k_equals_brute_force_with_distractors_in_the_gallery(tmp_path):
    identity = _write_tinyface(tmp_path, np.random.default_rng(0))
    vectors = _identity_vectors(list(identity), identity.get, seed=2, noise=1.5)
    found = bm.find_tinyface(tmp_path)[0]
    result = suite.run_tinyface(found, bm.BENCHMARKS[-1], FakeEmbedder(vectors), _args())
    unit = {n: (v + v[::-1]) / np.linalg.norm(v + v[::-1]) for n, v in vectors.items()}  # flip: v + mirror
    gallery = [n for n in identity if "_g" in n or n.startswith("d")]
    ranks = []
    for probe in (n for n in identity if n.endswith("_p.jpg")):
        by_subject = {}
        for name in gallery:
            by_subject[identity[name]] = max(by_subject.get(identity[name], -2), unit[probe] @ unit[name])
        mate = by_subject[identity[probe]]
        ranks.append(1 + sum(score >= mate for subject, score in by_subject.items() if subject != identity[probe]))
    for k in bm.TINYFACE_RANKS:
        assert result["metrics"][f"rank{k}"] == pytest.approx(100 * np.mean(np.array(ranks) <= k))
    assert result["sizes"]["distractors"] == 6 and result["sizes"]["centred_crops"] == 0
    assert 0 < result["metrics"]["rank1"] < 100  # the noise makes rank 1 a real test


def test_centred_crop_is_counted_for_faces_without_landmarks(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    faces = bm.FaceFiles.unaligned([tmp_path / "a.png"])
    crop, _, ok, centred = bm.FaceDataset(faces)[0]
    expected = cv2.resize(image[5:25, :, ::-1], (112, 112), interpolation=cv2.INTER_LINEAR)  # centre 20x20, RGB
    assert ok and centred
    np.testing.assert_array_equal(crop.permute(1, 2, 0).numpy(), expected)


def _entry(name, metrics, refused=None):
    return {"benchmark": name, "metrics": metrics, "refused": refused, "headline": list(metrics), "seconds": 1.0}


def test_compare_prints_both_rows_the_difference_and_marks_one_sided_benchmarks():
    a = {"model": {"name": "a", "file": "a.pt", "sha256": "1" * 64},
         "results": [_entry("lfw", {"accuracy": 99.5}), _entry("rfw", {"mean": 90.0})]}
    b = {"model": {"name": "b", "file": "b.pt", "sha256": "2" * 64},
         "results": [_entry("lfw", {"accuracy": 99.75}), _entry("ijbc", {}, "refused: NaN")]}
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")) for line in
            suite.compare_table(a, b).splitlines() if line.startswith("| ") and "---" not in line}
    assert ("lfw", "accuracy", "99.50", "99.75", "+0.25") in rows
    assert ("rfw", "mean", "90.00", "absent", "only in a") in rows
    assert ("ijbc", "", "absent", "refused: NaN", "only in b") in rows


def test_discovery_says_what_it_found_and_why_it_skipped(tmp_path):
    save_bin(tmp_path / "cfp_fp.bin", [b""] * 20, [True, False] * 5)
    for race in bm.RFW_RACES[:3]:
        for path in bm.rfw_paths(tmp_path, race):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    (tmp_path / "IJBC" / "meta").mkdir(parents=True)
    planned, lines = suite.discover(tmp_path, {"bin"})
    assert [found.name for _, found in planned] == ["cfp_fp"]
    assert f"found cfp_fp: {tmp_path / 'cfp_fp.bin'}" in lines
    assert any(line.startswith("skipped RFW: RFW/test is there but") and "Indian" in line for line in lines)
    assert f"skipped IJB-C: {tmp_path / 'IJBC'} lacks ijbc_name_5pts_score.txt" in lines
    assert any(line.startswith("skipped TinyFace: not found (expected") for line in lines)
    assert any(line.startswith("skipped LFW pairs.txt: not found") for line in lines)


def test_a_nan_model_is_refused_and_no_number_is_printed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = [cv2.imencode(".png", rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))[1].tobytes()
              for _ in range(24)]
    save_bin(tmp_path / "lfw.bin", images, [True, False] * 6)
    torch.manual_seed(0)
    model = get_model("vit_nano", num_features=16)
    torch.save(diverged_state_dict(model, float("nan")), tmp_path / "nan.pt")
    code = suite.main(["--model-prefix", str(tmp_path / "nan.pt"), "--network", "vit_nano", "--data-root",
                       str(tmp_path), "--result-dir", str(tmp_path / "out"), "--device", "cpu",
                       "--num-workers", "0"])
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert code == 0
    assert saved["results"][0]["metrics"] == {}
    assert saved["results"][0]["refused"].startswith("refused: 24 of 24 embeddings of lfw.bin are not finite")
    assert "| nan | refused: 24 of 24" in out and "| lfw |  | refused: 24 of 24" in out
    assert "| lfw | accuracy" not in out and "| lfw | xnorm" not in out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "suite.csv").read_text())))
    assert [(row["metric"], row["value"]) for row in rows] == [("", "")] and rows[0]["refused"]


def test_a_second_run_with_another_protocol_option_reads_the_features_cache(tmp_path):
    rng = np.random.default_rng(1)
    images = [cv2.imencode(".png", rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))[1].tobytes()
              for _ in range(24)]
    save_bin(tmp_path / "lfw.bin", images, [True, False] * 6)
    torch.manual_seed(0)
    torch.save(get_model("vit_nano", num_features=16).state_dict(), tmp_path / "m.pt")
    argv = ["--model-prefix", str(tmp_path / "m.pt"), "--network", "vit_nano", "--data-root", str(tmp_path),
            "--device", "cpu", "--num-workers", "0", "--features-cache", str(tmp_path / "cache")]
    first = suite.run_suite(suite.parse_args([*argv, "--result-dir", str(tmp_path / "a")]))
    second = suite.run_suite(suite.parse_args([*argv, "--result-dir", str(tmp_path / "b"), "--no-norm-score"]))
    assert first["settings"]["network_runs"] == 1 and second["settings"]["network_runs"] == 0
    assert second["results"][0]["metrics"] == first["results"][0]["metrics"]


def test_ijbc_numbers_equal_those_of_eval_ijbc_on_the_same_folder(tmp_path):
    import eval_ijbc
    from tests.test_eval_ijbc_cli import _build_ijbc

    _build_ijbc(tmp_path / "data" / "IJBC")
    torch.manual_seed(0)
    torch.save(get_model("vit_nano", num_features=16).state_dict(), tmp_path / "m.pt")
    model = ["--model-prefix", str(tmp_path / "m.pt"), "--network", "vit_nano", "--device", "cpu",
             "--num-workers", "0", "--no-norm-score"]
    assert eval_ijbc.main([*model, "--image-path", str(tmp_path / "data" / "IJBC"), "--result-dir",
                           str(tmp_path / "cli"), "--job", "run", "--target", "IJBC"]) == 0
    result = suite.run_suite(suite.parse_args([*model, "--data-root", str(tmp_path / "data"), "--result-dir",
                                               str(tmp_path / "suite")]))["results"][0]
    table = json.loads((tmp_path / "cli" / "run" / "ijbc_result.json").read_text())
    one_to_n = json.loads((tmp_path / "cli" / "run" / "ijbc_1N_result.json").read_text())["mean"]
    assert {key: result["metrics"][f"TAR@FAR={key}"] for key in table} == table
    assert {key: result["metrics"][f"1:N {key}"] for key in one_to_n} == one_to_n
    np.testing.assert_array_equal(np.load(tmp_path / "suite" / "ijbc" / "ijbc.npy"),
                                  np.load(tmp_path / "cli" / "run" / "ijbc.npy"))  # the same pair scores
    assert result["sizes"]["images"] == 36 and result["switches"]["norm_score"] is False
