"""Face detection on a real photo (scikit-image's astronaut, public domain) with the YuNet model in
tests/data/yunet (MIT): boxes, landmark order, alignment, EXIF, the CLI's --detect modes, the Python API,
and the checked download of the model."""

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from backbones import get_model
from eval.align import ARCFACE_TEMPLATE
from eval.detect import (
    FaceDetector,
    align_largest,
    download_detector_model,
    find_detector_model,
    load_detector,
    read_photo,
)
from eval.recognizer import FaceRecognizer
from tools import inference
from utils.errors import UserError
from utils.opencv import cv2

YUNET = Path(__file__).parent / "data" / "yunet" / "face_detection_yunet.onnx"
ASTRONAUT_BOX = (178, 63, 90, 113)  # x, y, w, h from tests/data/yunet/README.md
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF: the stored pixels must be turned 90 degrees clockwise for display


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(YUNET)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The astronaut as JPEG, upright and stored rotated with an EXIF tag; a two-face canvas; a blank image;
    and vit_nano weights."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = data.astronaut()  # 512 x 512 x 3 uint8 RGB
    Image.fromarray(astronaut).save(folder / "upright.jpg", quality=95)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(astronaut)))  # turned 90 degrees anticlockwise
    exif = stored.getexif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    stored.save(folder / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
    canvas = np.full((600, 900, 3), 128, dtype=np.uint8)
    canvas[40:552, 350:862] = astronaut  # the large face, at (350, 40)
    small = cv2.resize(astronaut, (205, 205), interpolation=cv2.INTER_AREA)
    canvas[200:405, 20:225] = small  # the same face at 0.4 times the size
    Image.fromarray(canvas).save(folder / "two_faces.png")
    Image.fromarray(np.full((300, 400, 3), 200, dtype=np.uint8)).save(folder / "blank.png")
    torch.manual_seed(0)
    model = get_model("vit_nano").eval()
    torch.save(model.state_dict(), folder / "vit_nano.pt")
    return dict(folder=folder, astronaut=astronaut, canvas=canvas, model=model,
                args=["--network", "vit_nano", "--weights", str(folder / "vit_nano.pt"), "--detector-model",
                      str(YUNET)])


def redetected_landmarks(detector: FaceDetector, crop: np.ndarray) -> np.ndarray:
    """Landmarks [5, 2] the detector finds on a 112x112 crop, detected at twice the size."""
    faces = detector.detect(cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC))
    assert len(faces) == 1
    return faces[0].landmarks / 2


def test_astronaut_has_one_face_at_the_documented_box_with_landmarks_in_order(detector, photos):
    faces = detector.detect(photos["astronaut"])
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, ASTRONAUT_BOX, atol=2)
    x, y, width, height = faces[0].box
    (left_eye, right_eye, nose, left_mouth, right_mouth) = faces[0].landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < nose[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert np.all((faces[0].landmarks >= (x, y)) & (faces[0].landmarks <= (x + width, y + height)))


def test_aligned_crop_puts_the_eyes_and_nose_on_the_template(detector, photos):
    """Detecting again on the aligned crop finds the eyes and nose within 5 pixels of the ArcFace template
    (a wrong landmark order would turn or mirror the crop)."""
    crop, _ = align_largest(detector, photos["astronaut"])
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    found = redetected_landmarks(detector, crop)
    assert np.abs(found[:3] - ARCFACE_TEMPLATE[:3]).max() < 5


def test_the_larger_of_two_faces_comes_first(detector, photos):
    faces = detector.detect(photos["canvas"])
    assert len(faces) == 2
    np.testing.assert_allclose(faces[0].box[:2], np.add(ASTRONAUT_BOX[:2], (350, 40)), atol=5)
    np.testing.assert_allclose(faces[1].box[:2], np.add(np.multiply(ASTRONAUT_BOX[:2], 0.4), (20, 200)), atol=5)
    assert faces[0].area > 4 * faces[1].area


def test_large_photos_are_detected_downscaled_with_landmarks_in_full_resolution(photos):
    """A 1536-pixel copy found through a 512-pixel detection gives the landmarks of the original, times 3."""
    big = cv2.resize(photos["astronaut"], (1536, 1536), interpolation=cv2.INTER_CUBIC)
    [face] = FaceDetector(YUNET, max_side=512).detect(big)
    [original] = FaceDetector(YUNET).detect(photos["astronaut"])
    np.testing.assert_allclose(face.landmarks, original.landmarks * 3, atol=3)


def test_exif_rotated_photo_gives_the_crop_of_the_upright_photo(detector, photos):
    folder = photos["folder"]
    upright, upright_face = align_largest(detector, folder / "upright.jpg")
    rotated, rotated_face = align_largest(detector, folder / "exif_rotated.jpg")
    np.testing.assert_allclose(rotated_face.box, upright_face.box, atol=1)
    assert np.abs(rotated.astype(int) - upright).mean() < 6  # two JPEG encodings of the same pixels


def test_blank_photo_has_no_face(detector, photos):
    assert detector.detect(read_photo(photos["folder"] / "blank.png")) == []
    with pytest.raises(UserError, match="no face found in '.*blank.png'"):
        align_largest(detector, photos["folder"] / "blank.png")


def similarities(output: str) -> list[float]:
    return [float(value) for value in re.findall(r"cosine similarity: (\S+)", output)]


def test_cli_compare_prints_the_boxes_and_the_similarity_of_the_largest_faces(detector, photos, capsys):
    folder = photos["folder"]
    argv = [*photos["args"], "--detect", "--compare", str(folder / "two_faces.png"), str(folder / "upright.jpg")]
    assert inference.main(argv) == 0
    output = capsys.readouterr().out
    boxes = re.findall(r"face at x=(\d+) y=(\d+) w=(\d+) h=(\d+)", output)
    largest = [detector.detect(photos["canvas"])[0], detector.detect(photos["astronaut"])[0]]
    assert [tuple(map(int, box)) for box in boxes] == [tuple(np.round(face.box).astype(int)) for face in largest]
    recognizer = FaceRecognizer("vit_nano", folder / "vit_nano.pt", YUNET, device="cpu")
    expected = recognizer.compare(folder / "two_faces.png", folder / "upright.jpg")
    assert similarities(output) == [pytest.approx(expected, abs=1e-5)]


def test_cli_all_faces_embeds_every_face_and_compares_each_pair(photos, capsys):
    folder = photos["folder"]
    argv = [*photos["args"], "--detect", "--all-faces", "--compare", str(folder / "two_faces.png"),
            str(folder / "upright.jpg")]
    assert inference.main(argv) == 0
    output = capsys.readouterr().out
    assert len(re.findall(r"two_faces.png#\d: face at", output)) == 2
    pairs = re.findall(r"cosine similarity: \S+ \((\S+), (\S+)\)", output)
    assert [(Path(a).name, Path(b).name) for a, b in pairs] == [("two_faces.png#0", "upright.jpg#0"),
                                                                ("two_faces.png#1", "upright.jpg#0")]
    assert similarities(output)[0] > similarities(output)[1]  # the same face at the same scale


def test_cli_folder_lists_photos_without_a_face_and_embeds_the_rest(photos, tmp_path, capsys):
    output = tmp_path / "emb.npy"
    argv = [*photos["args"], "--detect", "--folder", str(photos["folder"]), "--output", str(output)]
    assert inference.main(argv) == 0
    printed = capsys.readouterr().out
    assert "no face found in 1 of 4 photos: blank.png" in printed
    names = (tmp_path / "emb.txt").read_text().split()
    assert names == ["exif_rotated.jpg", "two_faces.png", "upright.jpg"]
    assert np.load(output).shape == (3, 512)


def test_cli_compare_with_a_faceless_photo_is_a_one_line_error(photos, capsys):
    folder = photos["folder"]
    argv = [*photos["args"], "--detect", "--compare", str(folder / "upright.jpg"), str(folder / "blank.png")]
    assert inference.main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no face found in" in error and "blank.png" in error


def test_save_aligned_round_trips_through_landmarks_file(photos, tmp_path):
    """The written landmarks file, fed back with --landmarks-file, gives the same embeddings bit for bit,
    and the crops on disk are the aligned faces."""
    folder, aligned = tmp_path / "photos", tmp_path / "aligned"
    (folder / "sub").mkdir(parents=True)
    for name in ("two_faces.png", "upright.jpg", "exif_rotated.jpg"):
        shutil.copy(photos["folder"] / name, folder / ("sub" if name == "exif_rotated.jpg" else "") / name)
    model_args = photos["args"][:4]
    detected = [*photos["args"], "--detect", "--folder", str(folder), "--save-aligned", str(aligned),
                "--output", str(tmp_path / "detected.npy")]
    assert inference.main(detected) == 0
    lines = (aligned / "landmarks.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["sub/exif_rotated.jpg", "two_faces.png", "upright.jpg"]
    assert sorted(path.relative_to(aligned).as_posix() for path in aligned.rglob("*.png")) == [
        "sub/exif_rotated.png", "two_faces.png", "upright.png"]
    replayed = [*model_args, "--folder", str(folder), "--landmarks-file", str(aligned / "landmarks.txt"),
                "--output", str(tmp_path / "replayed.npy")]
    assert inference.main(replayed) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "replayed.npy"), np.load(tmp_path / "detected.npy"))
    crop = cv2.cvtColor(cv2.imread(str(aligned / "upright.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(crop, align_largest(FaceDetector(YUNET), folder / "upright.jpg")[0])


def test_all_faces_landmarks_file_is_refused_as_input_with_the_reason(photos, tmp_path, capsys):
    aligned = tmp_path / "aligned"
    argv = ["--detect", "--detector-model", str(YUNET), "--all-faces", str(photos["folder"] / "two_faces.png"),
            "--save-aligned", str(aligned)]
    assert inference.main(argv) == 0
    assert sorted(path.name for path in aligned.glob("*.png")) == ["two_faces_0.png", "two_faces_1.png"]
    replay = [*photos["args"][:4], str(photos["folder"] / "two_faces.png"), "--landmarks-file",
              str(aligned / "landmarks.txt")]
    capsys.readouterr()
    assert inference.main(replay) == 2
    assert re.search(r"several lines for \S*two_faces.png", capsys.readouterr().err)


def test_recognizer_embeds_unit_norm_float32_like_an_independent_computation(photos):
    recognizer = FaceRecognizer("vit_nano", photos["folder"] / "vit_nano.pt", YUNET, device="cpu")
    embedding = recognizer.embed(photos["folder"] / "upright.jpg")
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-6)
    crop, _ = align_largest(FaceDetector(YUNET), photos["folder"] / "upright.jpg")
    x = torch.from_numpy(crop.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]  # [1, 3, 112, 112]
    with torch.no_grad():
        expected = photos["model"](x)[0].numpy()
    np.testing.assert_allclose(embedding, expected / np.linalg.norm(expected), atol=1e-5)
    assert recognizer.compare(photos["folder"] / "upright.jpg", photos["astronaut"]) > 0.99  # path vs array
    with pytest.raises(UserError, match="no face found in the photo array"):
        recognizer.embed(np.zeros((64, 64, 3), dtype=np.uint8))


def test_no_detector_model_says_where_to_get_one(monkeypatch, tmp_path, photos, capsys):
    monkeypatch.delenv("TRANSFACE_DETECTOR_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError, match="OpenCV's model zoo .*--detector-model PATH"):
        find_detector_model()
    argv = [*photos["args"][:4], "--detect", str(photos["folder"] / "upright.jpg")]
    assert inference.main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "face_detection_yunet" in error
    monkeypatch.setenv("TRANSFACE_DETECTOR_MODEL", str(YUNET))
    assert find_detector_model() == YUNET


def test_download_checks_the_sha256_caches_and_fails_in_one_line_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "zoo" / "face_detection_yunet.onnx"
    source.parent.mkdir()
    shutil.copy(YUNET, source)
    digest = hashlib.sha256(YUNET.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="not the pinned"):
        download_detector_model(source.as_uri(), "0" * 64)
    assert not (tmp_path / "cache" / "transface" / source.name).exists()
    path = download_detector_model(source.as_uri(), digest)
    assert path == tmp_path / "cache" / "transface" / source.name
    assert path.read_bytes() == YUNET.read_bytes()
    source.unlink()  # the cached copy is used from now on, without a download
    assert download_detector_model(source.as_uri(), digest) == path
    with pytest.raises(UserError, match="could not download .*--detector-model PATH") as raised:
        download_detector_model((tmp_path / "offline.onnx").as_uri(), digest)
    assert "\n" not in str(raised.value)


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    with pytest.raises(UserError, match="is not a YuNet face detector model"):
        FaceDetector(fake)


def test_a_detector_model_that_is_another_onnx_model_or_a_folder_is_one_line(tmp_path):
    """Regression: an embedding model as --detector-model was an OpenCV traceback at the first photo; a
    folder was reported as missing."""
    from tools import export_onnx

    export_onnx.export(get_model("vit_nano", num_features=8).eval(), tmp_path / "face.onnx", opset=17,
                       dynamic_batch=True)
    with pytest.raises(UserError, match="face.onnx' is not a YuNet face detector model OpenCV can load and run"):
        load_detector(tmp_path / "face.onnx")
    with pytest.raises(UserError, match=f"face detector model '{tmp_path}' is a folder"):
        load_detector(tmp_path)
