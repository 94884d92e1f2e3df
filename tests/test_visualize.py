"""tools.visualize: the patch weights, dominant patches and DPAP picture match the model and DPAP's own rule."""

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from backbones import get_model
from dpap import DPAP
from eval.detect import FaceDetector, align_largest
from tools import visualize
from utils.opencv import cv2

YUNET = Path(__file__).parent / "data" / "yunet" / "face_detection_yunet.onnx"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """vit_nano weights, the astronaut photo, and two aligned faces (the astronaut and its mirror image)."""
    folder = tmp_path_factory.mktemp("visualize")
    torch.manual_seed(0)
    model = get_model("vit_nano").eval()
    torch.save(model.state_dict(), folder / "vit_nano.pt")
    cv2.imwrite(str(folder / "photo.png"), data.astronaut()[:, :, ::-1])
    crop, _ = align_largest(FaceDetector(YUNET), data.astronaut())
    faces = np.stack([crop, crop[:, ::-1]])  # [2, 112, 112, 3] RGB
    for index, face in enumerate(faces):
        cv2.imwrite(str(folder / f"face{index}.png"), face[:, :, ::-1])
    return dict(folder=folder, model=model, faces=faces,
                args=["--network", "vit_nano", "--weights", str(folder / "vit_nano.pt")])


def test_dominant_patches_are_the_top_k_se_weights_and_dpap_changes_only_them(setup):
    model, faces = setup["model"], setup["faces"]
    dpap = DPAP(k=5)
    generator = torch.Generator().manual_seed(0)
    patch_weights, cells, perturbed = visualize.attention(model, faces, dpap, torch.device("cpu"), generator)
    x = torch.from_numpy(faces.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)  # [2, 3, 112, 112]
    expected = model.patch_weights(x)  # [2, N], DPAP's scoring pass
    torch.testing.assert_close(patch_weights, expected)
    top = np.argsort(-expected.numpy(), axis=1)[:, :5]  # [2, 5]
    assert [set(row) for row in cells.numpy()] == [set(row) for row in top]
    size = model.patch_size
    grid = 112 // size
    for face, after, face_cells in zip(faces, perturbed, cells.tolist()):
        inside = np.zeros(face.shape[:2], dtype=bool)
        for cell in face_cells:
            row, col = divmod(cell, grid)
            inside[row * size:(row + 1) * size, col * size:(col + 1) * size] = True
        np.testing.assert_array_equal(after[~inside], face[~inside])
        assert (after[inside] != face[inside]).any()


def test_cli_writes_the_picture_with_k_from_the_config(setup, tmp_path, capsys):
    config = tmp_path / "config.py"
    config.write_text("from easydict import EasyDict\nconfig = EasyDict(dpap_k=3)\n")
    output = tmp_path / "attention.png"
    folder = setup["folder"]
    argv = [*setup["args"], str(folder / "face0.png"), str(folder / "face1.png"), "--config", str(config),
            "--output", str(output)]
    assert visualize.main(argv) == 0
    assert "2 faces, top-3 patches of a 12x12 grid" in capsys.readouterr().out
    picture = cv2.imread(str(output))
    assert picture.shape == (400, 800, 3)  # two rows of four 2-inch panels at 100 dpi
    assert picture.std() > 10  # not blank


def test_cli_detects_the_face_in_a_photo(setup, tmp_path):
    output = tmp_path / "attention.png"
    argv = [*setup["args"], str(setup["folder"] / "photo.png"), "--detect", "--detector-model", str(YUNET),
            "--output", str(output)]
    assert visualize.main(argv) == 0
    assert cv2.imread(str(output)).shape == (200, 800, 3)


def test_an_unaligned_image_without_detect_is_a_clear_error(setup, tmp_path, capsys):
    argv = [*setup["args"], str(setup["folder"] / "photo.png"), "--output", str(tmp_path / "a.png")]
    assert visualize.main(argv) == 2
    assert "not an aligned 112x112 face" in capsys.readouterr().err


def test_a_cnn_without_se_gate_is_refused_in_one_line(setup, tmp_path, capsys):
    weights = tmp_path / "mbf.pt"
    torch.save(get_model("mbf").state_dict(), weights)
    argv = ["--network", "mbf", "--weights", str(weights), str(setup["folder"] / "face0.png"), "--output",
            str(tmp_path / "a.png")]
    assert visualize.main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "network 'mbf' has no SE patch gate" in error


def test_nan_weights_exit_2_and_write_no_picture(setup, tmp_path, capsys):
    """Regression: NaN weights drew a picture and exited 0; visualize goes through eval.guard like every
    evaluation."""
    state = {key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
             for key, value in setup["model"].state_dict().items()}
    torch.save(state, tmp_path / "nan.pt")
    argv = ["--network", "vit_nano", "--weights", str(tmp_path / "nan.pt"), str(setup["folder"] / "face0.png"),
            "--output", str(tmp_path / "a.png")]
    assert visualize.main(argv) == 2
    assert "have non-finite embeddings (NaN or ±inf), the first face 0" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
