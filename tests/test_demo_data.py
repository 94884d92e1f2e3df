"""The demo data generator: deterministic, readable by the project's readers, labels and landmarks true."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import RecordDataset
from eval.align import align_face
from eval.ijb_data import (
    MetaPaths,
    check_images_exist,
    read_identification_csv,
    read_image_meta,
    read_pairs,
)
from tools import make_demo_data as demo
from tools.demo_faces import alignment_matrix, render
from utils.binfile import load_bin
from utils.decode import decode_chw
from utils.opencv import cv2

TINY = demo.DemoSpec(seed=3, num_train_ids=6, images_per_id=4, num_val_ids=4, num_pairs=20, num_ijb_ids=5,
                     templates_per_id=2)


def _silent(*args):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, demo.generate(TINY, root, num_workers=1, log=_silent)


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_gives_same_bytes_with_one_or_two_worker_processes(tiny, tmp_path):
    root, _ = tiny
    demo.generate(TINY, tmp_path, num_workers=2, log=_silent)
    assert _file_hashes(tmp_path) == _file_hashes(root)


def test_another_seed_changes_training_pairs_and_ijb_images(tiny, tmp_path):
    root, _ = tiny
    other = demo.DemoSpec(**{**TINY.__dict__, "seed": 4, "num_ijb_ids": 2})
    demo.generate(other, tmp_path, num_workers=1, log=_silent)
    first, second = _file_hashes(root), _file_hashes(tmp_path)
    for name in ("train.rec", "demo_lfw.bin", "demo_hard.bin", "IJBC/loose_crop/1.jpg"):
        assert first[name] != second[name], name


def test_training_set_reads_back_with_record_dataset_as_generated(tiny):
    root, _ = tiny
    data = RecordDataset(root)
    assert len(data) == TINY.num_train_ids * TINY.images_per_id
    assert (root / "property").read_text().strip() == f"{TINY.num_train_ids},112,112"
    for index in range(len(data)):
        image, label = data[index]
        assert label == index // TINY.images_per_id
        expected = decode_chw(demo.train_images(TINY, label)[index % TINY.images_per_id])
        assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
        assert torch.equal(image, expected)


def test_pair_labels_match_the_identities_the_generator_drew(tiny):
    root, manifest = tiny
    for name, hard in zip(demo.VERIFICATION_SETS, (False, True)):
        images, issame = load_bin(root / f"{name}.bin")
        identities = manifest["pairs"][name]
        assert len(issame) == TINY.num_pairs and sum(issame) == TINY.num_pairs // 2
        assert issame == [first == second for first, second in identities]
        for number in (0, 1, 2, 3, TINY.num_pairs - 1):  # images re-rendered from the bookkeeping
            pair = demo.Pair(*identities[number])
            assert (images[2 * number], images[2 * number + 1]) == demo.pair_images(TINY, hard, number, pair)


def test_hard_impostors_share_skin_and_hair_colour_when_possible():
    spec = demo.DemoSpec(num_train_ids=1, num_val_ids=60, num_pairs=40)
    pairs = demo.plan_pairs(spec, hard=True)
    impostors = [pair for pair in pairs if not pair.same]
    people = {index: demo.identity_of(spec, index) for index in spec.val_ids()}
    matched = [(people[p.first].skin, people[p.first].hair_colour) == (people[p.second].skin,
                                                                        people[p.second].hair_colour)
               for p in impostors]
    assert np.mean(matched) > 0.9


def test_held_out_identities_never_appear_in_training(tiny):
    root, manifest = tiny
    train = set(range(*manifest["splits"]["train"]))
    val = set(range(*manifest["splits"]["val"]))
    ijb = set(range(*manifest["splits"]["ijb"]))
    assert not (train & val or train & ijb or val & ijb)
    data = RecordDataset(root, decode=False)
    assert {data[index][1] for index in range(len(data))} <= train
    assert {index for pairs in manifest["pairs"].values() for pair in pairs for index in pair} <= val
    assert {row[1] for row in manifest["ijb_images"]} <= ijb
    fingerprints = manifest["fingerprints"]
    assert not set(fingerprints["train"]) & (set(fingerprints["val"]) | set(fingerprints["ijb"]))
    assert fingerprints["val"] == [demo.identity_of(TINY, index).fingerprint() for index in sorted(val)]


def test_ijb_set_parses_with_the_evaluation_readers_and_follows_the_protocol(tiny):
    root, manifest = tiny
    paths = MetaPaths.of(root / "IJBC", "IJBC")
    meta = read_image_meta(paths)
    check_images_exist(root / "IJBC" / "loose_crop", meta)
    subject_of = {row[3]: row[2] for row in manifest["ijb_images"]}  # template -> subject
    assert meta.names == [row[0] for row in manifest["ijb_images"]]
    assert ((meta.faceness >= 0.6) & (meta.faceness <= 1.0)).all()
    first, second, labels = read_pairs(paths.pairs)
    assert labels.tolist() == [int(subject_of[a] == subject_of[b]) for a, b in zip(first, second)]
    assert labels.sum() == TINY.num_ijb_ids * (TINY.templates_per_id * (TINY.templates_per_id - 1) // 2)
    media_per_template = {t: len(set(meta.medias[meta.templates == t])) for t in set(meta.templates.tolist())}
    frames_per_media = np.bincount(meta.medias)
    assert max(media_per_template.values()) > 1 and frames_per_media.max() > 1
    probes, probe_subjects = read_identification_csv(paths.probes)
    galleries = {name: read_identification_csv(path) for name, path in paths.galleries.items()}
    g1, g2 = (set(subjects.tolist()) for _, subjects in galleries.values())
    assert g1 and g2 and not g1 & g2
    assert set(probe_subjects.tolist()) - (g1 | g2)  # some probes have no mate in any gallery
    listed = set(meta.templates.tolist())
    assert set(probes.tolist()) <= listed
    assert all(set(templates.tolist()) <= listed for templates, _ in galleries.values())
    image = cv2.imread(str(root / "IJBC" / "loose_crop" / meta.names[0]))
    assert min(image.shape[:2]) >= 150


def test_aligning_a_loose_crop_with_its_landmarks_gives_the_aligned_rendering(tiny):
    root, _ = tiny
    meta = read_image_meta(MetaPaths.of(root / "IJBC", "IJBC"))
    plan = demo.plan_ijb(TINY)
    rows = sorted({image.identity: row for row, image in reversed(list(enumerate(plan.images)))}.values())
    references = []  # one aligned rendering (no blur, noise or JPEG) per person
    for row in rows:
        image = plan.images[row]
        person = demo.identity_of(TINY, image.identity)
        view = demo.ijb_view(TINY, image)
        references.append(render(person, view, alignment_matrix(person, view), degrade=False).astype(np.float32))
    face = np.s_[20:100, 20:92]  # the face region of the 112x112 crop
    for number, row in enumerate(rows):
        loose = cv2.cvtColor(cv2.imread(str(root / "IJBC" / "loose_crop" / meta.names[row])), cv2.COLOR_BGR2RGB)
        aligned = align_face(loose, meta.landmarks[row]).astype(np.float32)
        differences = [np.abs(aligned - reference)[face].mean() for reference in references]
        same = differences.pop(number)
        assert same < 16 and same < 0.5 * min(differences), (meta.names[row], same, differences)


def test_colour_histograms_equal_numpy_histogramdd():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 3, 10, 12), dtype=np.uint8)
    expected = [np.histogramdd(image.reshape(3, -1).T, bins=(8, 8, 8), range=[(0, 256)] * 3)[0].ravel()
                for image in images]
    np.testing.assert_array_equal(demo.colour_histograms(images), np.stack(expected))


def test_cosine_accuracy_is_perfect_for_separable_pairs_and_chance_for_identical_scores():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    features = np.empty((80, 16))
    features[0::2] = base
    issame = np.arange(40) % 2 == 0
    features[1::2] = np.where(issame[:, None], base + 0.01 * rng.normal(size=(40, 16)), -base)
    assert demo.cosine_accuracy(features, issame) == 1.0
    assert demo.cosine_accuracy(np.ones((80, 4)), issame) == 0.5


def test_check_reports_baselines_for_both_sets(tiny):
    root, _ = tiny
    results = demo.check(root)
    assert set(results) == set(demo.VERIFICATION_SETS)
    assert all(0.0 <= value <= 1.0 for methods in results.values() for value in methods.values())


def test_contact_sheet_has_one_row_per_identity_and_a_loose_crop_column(tmp_path):
    path = tmp_path / "sheet.png"
    demo.contact_sheet(TINY, path, num_ids=2, num_views=3)
    sheet = cv2.imread(str(path))
    assert sheet.shape == (2 * 112, (3 + 2 + 1) * 112, 3)


def test_cli_refuses_to_overwrite_rejects_bad_counts_and_checks_only_existing_sets(tiny, capsys):
    root, _ = tiny
    assert demo.main(["--out", str(root), "--workers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert demo.main(["--out", str(root / "new"), "--num-pairs", "4"]) == 2
    assert "--num-pairs" in capsys.readouterr().err
    assert demo.main(["--out", str(root / "missing"), "--check"]) == 2
    assert "generate the demo data first" in capsys.readouterr().err
