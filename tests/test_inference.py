"""Inference on image files: cosine comparison, landmark alignment, folder batches, ONNX and PyTorch agree."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones import get_model
from eval.align import ARCFACE_TEMPLATE
from tests.diverged import collapsed_state_dict, diverged_state_dict
from tools import inference
from tools.export_onnx import export
from utils.errors import UserError
from utils.opencv import cv2


def smooth_face(seed: int) -> np.ndarray:
    """A smooth 112x112x3 uint8 image (BGR as written to disk): resampling it barely changes it."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (112, 112), interpolation=cv2.INTER_CUBIC)


def reference_embeddings(model: torch.nn.Module, bgr_faces: list[np.ndarray]) -> np.ndarray:
    """Embeddings computed here, independently of tools.inference: BGR -> RGB, [-1, 1], NCHW."""
    rgb = np.stack([face[:, :, ::-1] for face in bgr_faces]).astype(np.float32)  # [B, H, W, 3]
    x = torch.from_numpy((rgb / 127.5 - 1.0).transpose(0, 3, 1, 2).copy())  # [B, 3, H, W]
    with torch.no_grad():
        return model.eval()(x).numpy()


def landmark_text(points: np.ndarray) -> str:
    return ",".join(f"{value:.4f}" for value in points.reshape(-1))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """vit_nano weights, two aligned faces, and face 0 warped into a 150x150 image with its landmarks."""
    folder = tmp_path_factory.mktemp("faces")
    torch.manual_seed(0)
    model = get_model("vit_nano").eval()
    weights = folder / "vit_nano.pt"
    torch.save(model.state_dict(), weights)
    faces = [smooth_face(0), smooth_face(1)]
    for index, face in enumerate(faces):
        cv2.imwrite(str(folder / f"face{index}.png"), face)
    # A known similarity (scale 1.1, rotation 10 degrees) that puts the whole aligned crop inside 150x150.
    angle, scale = np.deg2rad(10.0), 1.1
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = np.array([[0, 0], [112, 0], [0, 112], [112, 112]]) @ linear.T  # [4, 2]
    shift = 75.0 - (corners.min(0) + corners.max(0)) / 2
    warp = np.hstack([linear, shift[:, None]])  # [2, 3]
    cv2.imwrite(str(folder / "big.png"), cv2.warpAffine(faces[0], warp, (150, 150), flags=cv2.INTER_CUBIC))
    big_landmarks = ARCFACE_TEMPLATE @ linear.T + shift  # [5, 2]
    weights_args = ["--network", "vit_nano", "--weights", str(weights)]
    return dict(folder=folder, model=model, faces=faces, big_landmarks=big_landmarks, args=weights_args)


def compare(setup, capsys, *extra) -> float:
    assert inference.main([*setup["args"], "--compare", *extra]) == 0
    return float(re.search(r"cosine similarity: (\S+)", capsys.readouterr().out).group(1))


def test_compare_gives_one_for_the_same_image_and_less_for_another(setup, capsys):
    folder = setup["folder"]
    same = compare(setup, capsys, str(folder / "face0.png"), str(folder / "face0.png"))
    other = compare(setup, capsys, str(folder / "face0.png"), str(folder / "face1.png"))
    assert same == pytest.approx(1.0, abs=1e-6)
    embeddings = reference_embeddings(setup["model"], setup["faces"])
    expected = embeddings[0] @ embeddings[1] / np.linalg.norm(embeddings, axis=1).prod()
    assert other == pytest.approx(expected, abs=1e-5)
    assert other < 0.9


def test_landmarks_align_a_warped_image_back_to_the_aligned_embedding(setup, capsys):
    """A 150x150 warp of an aligned face plus its landmarks embeds like the aligned face itself."""
    folder = setup["folder"]
    similarity = compare(setup, capsys, str(folder / "big.png"), str(folder / "face0.png"),
                         "--landmarks", landmark_text(setup["big_landmarks"]),
                         "--landmarks", landmark_text(ARCFACE_TEMPLATE))
    other = compare(setup, capsys, str(folder / "face1.png"), str(folder / "face0.png"))
    assert similarity > 0.995
    assert similarity > other + 0.1


def test_named_landmarks_file_aligns_only_the_listed_images(setup, tmp_path, capsys):
    folder = setup["folder"]
    landmarks_file = tmp_path / "landmarks.txt"
    big_name = str(folder / "big.png")
    landmarks_file.write_text(f"{big_name} {' '.join(landmark_text(setup['big_landmarks']).split(','))}\n")
    output = tmp_path / "emb.npy"
    argv = [*setup["args"], big_name, str(folder / "face0.png"), "--landmarks-file", str(landmarks_file),
            "--output", str(output)]
    assert inference.main(argv) == 0
    big, aligned = np.load(output)
    assert big @ aligned / (np.linalg.norm(big) * np.linalg.norm(aligned)) > 0.995


def test_wrong_size_without_landmarks_exits_2_with_the_message(setup, capsys):
    status = inference.main([*setup["args"], str(setup["folder"] / "big.png")])
    assert status == 2
    error = capsys.readouterr().err
    assert "is 150x150, not an aligned 112x112 face" in error and "--landmarks" in error


@pytest.mark.parametrize(("argv_extra", "message"), [
    (["--landmarks", "1,2,3"], "expected 10 numbers"),
    (["--landmarks", "1,2,3,4,5,6,7,8,9,10", "--landmarks", "1,2,3,4,5,6,7,8,9,10"], "given 2 times for 1"),
])
def test_bad_landmarks_exit_2_with_the_message(setup, capsys, argv_extra, message):
    status = inference.main([*setup["args"], str(setup["folder"] / "big.png"), *argv_extra])
    assert status == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def face_folder(setup, tmp_path_factory):
    """Three aligned faces, one in a sub-folder, and a non-image file that must be skipped."""
    folder = tmp_path_factory.mktemp("folder")
    (folder / "sub").mkdir()
    faces = [smooth_face(seed) for seed in (2, 3, 4)]
    names = ["a.png", "b.jpg", "sub/c.png"]
    for name, face in zip(names, faces):
        cv2.imwrite(str(folder / name), face)
    (folder / "notes.txt").write_text("not an image")
    decoded = [cv2.imread(str(folder / name)) for name in names]  # JPEG is lossy: embed what is on disk
    return folder, names, decoded


def test_folder_batch_writes_embeddings_and_names(setup, face_folder, tmp_path):
    folder, names, decoded = face_folder
    output = tmp_path / "out" / "emb.npy"
    argv = [*setup["args"], "--folder", str(folder), "--output", str(output), "--batch-size", "2"]
    assert inference.main(argv) == 0
    embeddings = np.load(output)
    assert embeddings.shape == (3, 512) and embeddings.dtype == np.float32
    assert (tmp_path / "out" / "emb.txt").read_text().splitlines() == names
    np.testing.assert_allclose(embeddings, reference_embeddings(setup["model"], decoded), atol=1e-5)


def test_flip_and_normalize_match_an_independent_computation(setup, face_folder, tmp_path):
    folder, _, decoded = face_folder
    output = tmp_path / "emb.npy"
    argv = [*setup["args"], "--folder", str(folder), "--output", str(output), "--flip", "--normalize"]
    assert inference.main(argv) == 0
    expected = (reference_embeddings(setup["model"], decoded)
                + reference_embeddings(setup["model"], [face[:, ::-1] for face in decoded]))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(output), expected, atol=1e-5)


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_onnx_model_gives_the_pytorch_embeddings(setup, face_folder, tmp_path, dynamic_batch):
    """Also with a fixed batch of 1, where the tool feeds the batch of 2 in chunks."""
    folder, _, decoded = face_folder
    onnx_path = tmp_path / "model.onnx"
    export(setup["model"], onnx_path, opset=17, dynamic_batch=dynamic_batch)
    output = tmp_path / "emb.npy"
    argv = ["--onnx", str(onnx_path), "--folder", str(folder), "--output", str(output), "--batch-size", "2"]
    assert inference.main(argv) == 0
    np.testing.assert_allclose(np.load(output), reference_embeddings(setup["model"], decoded), atol=1e-4)


def test_no_model_or_two_models_is_a_clear_error(setup, capsys):
    image = str(setup["folder"] / "face0.png")
    assert inference.main([image]) == 2
    assert "no model given" in capsys.readouterr().err
    assert inference.main([*setup["args"], "--onnx", "m.onnx", image]) == 2
    assert "not both" in capsys.readouterr().err


def test_unreadable_image_is_a_clear_error(setup, tmp_path, capsys):
    broken = Path(tmp_path / "broken.png")
    broken.write_bytes(b"not an image")
    assert inference.main([*setup["args"], str(broken)]) == 2
    assert "broken.png' has no image header this project can read" in capsys.readouterr().err


def test_cuda_device_without_cuda_exits_2_with_the_message(setup, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    assert inference.main([*setup["args"], "--device", "cuda", str(setup["folder"] / "face0.png")]) == 2
    captured = capsys.readouterr()
    assert "device 'cuda' was asked for but CUDA is not available" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_diverged_weights_exit_2_and_write_no_embeddings(setup, face_folder, tmp_path, capsys, value):
    """eval.guard (issue 13): no .npy of NaN or ±inf, one line naming the first image."""
    folder, _, _ = face_folder
    torch.save(diverged_state_dict(setup["model"], value), tmp_path / "diverged.pt")
    output = tmp_path / "out" / "emb.npy"
    argv = ["--network", "vit_nano", "--weights", str(tmp_path / "diverged.pt"), "--folder", str(folder),
            "--output", str(output), "--flip"]
    assert inference.main(argv) == 2
    captured = capsys.readouterr()
    assert f"3 of 3 images of the inputs have non-finite embeddings (NaN or ±inf), the first '{folder}/a.png'" \
        in captured.err
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_zero_embeddings_give_no_similarity_and_no_normalized_file(setup, face_folder, tmp_path, capsys):
    """A collapsed model whose embeddings are all zero printed 'cosine similarity: nan' (--compare) and
    wrote NaN rows (--normalize); a zero vector has no direction, so both stop with one line instead."""
    folder, _, _ = face_folder
    torch.save(collapsed_state_dict(setup["model"], 0.0), tmp_path / "zero.pt")
    model = ["--network", "vit_nano", "--weights", str(tmp_path / "zero.pt")]
    assert inference.main([*model, "--compare", str(folder / "a.png"), str(folder / "b.jpg")]) == 2
    captured = capsys.readouterr()
    assert "2 of 2 embeddings of the inputs have zero norm, the first" in captured.err
    assert "cosine similarity" not in captured.out and len(captured.err.strip().splitlines()) == 1
    output = tmp_path / "out" / "emb.npy"
    assert inference.main([*model, "--folder", str(folder), "--output", str(output), "--normalize"]) == 2
    assert "3 of 3 embeddings of the inputs have zero norm" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_landmarks_file_line_names_any_file_name_spaces_and_newlines_too(tmp_path):
    """Regression: --save-aligned wrote `my photo.jpg x1 ... y5`, which --landmarks-file then refused
    (11 fields after splitting), and a newline in a name broke the file."""
    names = ["my photo, 2.jpg", "a\nb.jpg", "plain.jpg"]
    points = " ".join(str(value) for value in range(1, 11))
    lines = "".join(f"{inference.escape_name(name)} {points}\n" for name in names[:2])
    (tmp_path / "landmarks.txt").write_text(lines, encoding="utf-8")
    landmarks = inference.read_landmarks_file(tmp_path / "landmarks.txt", names)
    assert landmarks[2] is None and all(np.array_equal(found.reshape(-1), np.arange(1, 11)) for found in landmarks[:2])
    (tmp_path / "numbers.txt").write_text(" ".join(str(value) for value in range(11)) + "\n")
    with pytest.raises(UserError, match="expected 10 numbers"):  # 11 numbers are no name and 10 numbers
        inference.read_landmarks_file(tmp_path / "numbers.txt", ["x.jpg"])


def test_names_that_are_not_utf8_or_hold_a_newline_are_printed_escaped_one_a_line(setup, tmp_path, capsys):
    """Regression: printing a name with a byte that is not UTF-8 was a UnicodeEncodeError traceback."""
    folder = tmp_path / "odd"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), smooth_face(2))
    (folder / os.fsdecode(b"b\xff\nc.png")).write_bytes((folder / "a.png").read_bytes())
    assert inference.main([*setup["args"], "--folder", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("b\\xff\\nc.png: 512-d embedding")


def test_the_names_file_has_one_line_per_embedding_whatever_the_file_names_hold(tmp_path):
    """Regression: a newline in a file name gave 2 embeddings and 3 name lines; a form feed or U+2028 is a
    line break for str.splitlines; a name that is not UTF-8 (bytes 0xff) was a UnicodeEncodeError."""
    names = ["a\nb.png", "back\\slash\\n.png", "c\rd\x0ce\x1cf\x85g\u2028h\u2029.png", os.fsdecode(b"\xff\xfe.png"),
             "\\x41\\u2028 caf\u00e9.png"]
    names_path = inference.write_embeddings(tmp_path / "emb.npy", np.zeros((5, 4), np.float32), names)
    lines = names_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and [inference.unescape_name(line) for line in lines] == names
    assert os.fsencode(inference.unescape_name(lines[3])) == b"\xff\xfe.png"
