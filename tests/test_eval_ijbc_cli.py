"""eval_ijbc.main end to end on a tiny IJB-C-format folder built here (loose crops warped from synthetic
faces with known landmarks), with a random vit_nano; outputs checked against direct computations."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_ijbc
from backbones import get_model
from eval import ijb
from eval.align import ARCFACE_TEMPLATE, align_face
from eval.ijb_data import MetaPaths
from tests.diverged import diverged_state_dict
from tools import export_onnx
from utils.opencv import cv2

NUM_SUBJECTS, TEMPLATES_PER_SUBJECT, IMAGES_PER_TEMPLATE = 6, 3, 2
EMBEDDING_SIZE = 32  # not 512: any embedding size must work


def _face(rng, centre):
    noise = rng.uniform(-20, 20, (8, 8, 3)).astype(np.float32)
    return cv2.resize(centre + noise, (112, 112), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def _loose_crop(rng, face):
    """Warp the aligned face into a 200x200 crop by a random similarity; return (crop, its landmarks)."""
    theta, scale = np.deg2rad(rng.uniform(-20, 20)), rng.uniform(1.2, 1.6)
    rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = np.hstack([rotation, rng.uniform(5, 20, (2, 1))])  # aligned -> loose
    crop = cv2.warpAffine(face, forward, (200, 200), flags=cv2.INTER_CUBIC)
    return crop, ARCFACE_TEMPLATE @ rotation.T + forward[:, 2]


def _build_ijbc(root):
    """IJB-C layout: loose_crop/*.jpg, meta/ 1:1 files and 1:N csv files. Returns the template subjects."""
    rng = np.random.default_rng(0)
    (root / "loose_crop").mkdir(parents=True)
    paths = MetaPaths.of(root, "IJBC")
    paths.landmarks.parent.mkdir()
    landmark_lines, media_lines, subject_of, images_of = [], [], {}, {}
    for subject in range(NUM_SUBJECTS):
        centre = rng.uniform(40, 215, (8, 8, 3)).astype(np.float32)
        for t in range(TEMPLATES_PER_SUBJECT):
            template = 1000 + 7 * (subject * TEMPLATES_PER_SUBJECT + t)
            subject_of[template] = 500 + subject
            for _ in range(IMAGES_PER_TEMPLATE):
                name = f"{len(landmark_lines) + 1}.jpg"
                crop, landmarks = _loose_crop(rng, _face(rng, centre))
                cv2.imwrite(str(root / "loose_crop" / name), crop)
                points = " ".join(f"{v:.3f}" for v in landmarks.ravel())
                landmark_lines.append(f"{name} {points} {rng.uniform(0.5, 1.0):.3f}")
                media = 90000 + template if t == 0 else 80000 + len(media_lines)  # a video, else stills
                media_lines.append(f"{name} {template} {media}")
                images_of.setdefault(template, []).append(name)
    templates = list(subject_of)
    pair_lines = [f"{a} {b} {int(subject_of[a] == subject_of[b])}"
                  for k, a in enumerate(templates) for b in templates[k + 1:]]
    paths.landmarks.write_text("\n".join(landmark_lines) + "\n")
    paths.media.write_text("\n".join(media_lines) + "\n")
    paths.pairs.write_text("\n".join(pair_lines) + "\n")

    def write_csv(path, chosen):
        rows = [f"{t},{subject_of[t]},img/{name},1" for t in chosen for name in images_of[t]]
        path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n" + "\n".join(rows) + "\n")

    firsts = templates[::TEMPLATES_PER_SUBJECT]
    write_csv(paths.galleries["G1"], firsts[:3])
    write_csv(paths.galleries["G2"], firsts[3:])
    write_csv(paths.probes, [t for t in templates if t not in firsts])
    return subject_of


@pytest.fixture(scope="module")
def ijbc(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    _build_ijbc(root / "IJBC")
    torch.manual_seed(0)
    model = get_model("vit_nano", num_features=EMBEDDING_SIZE).eval()
    torch.save(model.state_dict(), root / "model.pt")
    argv = ["--model-prefix", str(root / "model.pt"), "--network", "vit_nano", "--image-path",
            str(root / "IJBC"), "--result-dir", str(root / "results"), "--job", "run", "--target", "IJBC",
            "--batch-size", "8", "--num-workers", "2", "--device", "cpu"]
    assert eval_ijbc.main(argv) == 0
    return root, model, root / "results" / "run"


def _direct_scores(out, meta_root, flip=True, detector=True, normalize_images=False):
    """Pair scores from the saved features by a per-template loop, pairs in file order."""
    paths = MetaPaths.of(meta_root, "IJBC")
    saved = np.load(out / "ijbc_features.npz")
    image_feats = saved["feats"].astype(np.float64) + (saved["feats_flip"] if flip else 0)
    if normalize_images:
        image_feats /= np.linalg.norm(image_feats, axis=1, keepdims=True)
    if detector:
        image_feats *= saved["faceness"][:, None]
    rows = [line.split() for line in paths.media.read_text().splitlines()]
    templates = np.array([int(r[1]) for r in rows])
    medias = np.array([int(r[2]) for r in rows])
    pooled = {}
    for template in set(templates.tolist()):
        members = templates == template
        total = sum(image_feats[members & (medias == m)].mean(axis=0) for m in set(medias[members].tolist()))
        pooled[template] = total / np.linalg.norm(total)
    pairs = [line.split() for line in paths.pairs.read_text().splitlines()]
    return np.array([pooled[int(a)] @ pooled[int(b)] for a, b, _ in pairs])


def test_end_to_end_run_writes_the_released_outputs(ijbc):
    _, _, out = ijbc
    for name in ("ijbc.npy", "ijbc_features.npz", "ijbc_result.json", "ijbc.pdf", "ijbc.png",
                 "ijbc_settings.json", "ijbc_1N_result.json"):
        assert (out / name).is_file(), name
    table = json.loads((out / "ijbc_result.json").read_text())
    assert list(table) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert all(0.0 <= v <= 100.0 for v in table.values())
    one_to_many = json.loads((out / "ijbc_1N_result.json").read_text())
    assert set(one_to_many) == {"G1", "G2", "mean"}
    assert one_to_many["G1"]["num_mated"] == 6 and one_to_many["G1"]["num_non_mated"] == 6
    assert one_to_many["mean"]["rank1"] == pytest.approx(
        (one_to_many["G1"]["rank1"] + one_to_many["G2"]["rank1"]) / 2)


def test_saved_features_are_the_network_embeddings_of_aligned_rgb_faces(ijbc):
    root, model, out = ijbc
    saved = np.load(out / "ijbc_features.npz")
    assert saved["feats"].shape == (36, EMBEDDING_SIZE) and saved["feats_flip"].shape == (36, EMBEDDING_SIZE)
    lines = MetaPaths.of(root / "IJBC", "IJBC").landmarks.read_text().splitlines()
    np.testing.assert_allclose(saved["faceness"], [float(line.split()[-1]) for line in lines], rtol=1e-6)
    for row in (0, 17, 35):
        fields = lines[row].split()
        image = cv2.imread(str(root / "IJBC" / "loose_crop" / fields[0]))
        aligned = align_face(image, np.array(fields[1:11], dtype=np.float32).reshape(5, 2))[:, :, ::-1]
        x = torch.from_numpy(aligned.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # [1, 3, H, W]
        with torch.no_grad():
            expected = model(torch.cat([x, x.flip(3)])).numpy()
        np.testing.assert_allclose(saved["feats"][row], expected[0], atol=1e-4)
        np.testing.assert_allclose(saved["feats_flip"][row], expected[1], atol=1e-4)


def test_a_cnn_checkpoint_is_evaluated_with_its_embeddings(ijbc, tmp_path):
    """insightface's CNNs through the same CLI: a plain mbf state_dict, as its backbone.pth files are."""
    root, _, _ = ijbc
    torch.manual_seed(0)
    model = get_model("mbf", num_features=EMBEDDING_SIZE).eval()
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    argv = ["--model-prefix", str(tmp_path / "backbone.pth"), "--network", "mbf", "--image-path",
            str(root / "IJBC"), "--result-dir", str(tmp_path), "--job", "mbf", "--target", "IJBC",
            "--batch-size", "36", "--num-workers", "0", "--device", "cpu"]
    assert eval_ijbc.main(argv) == 0
    saved = np.load(tmp_path / "mbf" / "ijbc_features.npz")
    assert saved["feats"].shape == (36, EMBEDDING_SIZE)
    fields = MetaPaths.of(root / "IJBC", "IJBC").landmarks.read_text().splitlines()[5].split()
    image = cv2.imread(str(root / "IJBC" / "loose_crop" / fields[0]))
    aligned = align_face(image, np.array(fields[1:11], dtype=np.float32).reshape(5, 2))[:, :, ::-1]
    x = torch.from_numpy(aligned.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # [1, 3, H, W]
    with torch.no_grad():
        expected = model(x).numpy()[0]
    np.testing.assert_allclose(saved["feats"][5], expected, atol=1e-4 * np.abs(expected).max())
    assert json.loads((tmp_path / "mbf" / "ijbc_result.json").read_text()).keys() == {
        "1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"}


def test_pair_scores_equal_a_direct_loop_over_the_saved_features(ijbc):
    root, _, out = ijbc
    np.testing.assert_allclose(np.load(out / "ijbc.npy"), _direct_scores(out, root / "IJBC"), atol=1e-6)


def _features_argv(root, out, job, *extra):
    return ["--features", str(out / "ijbc_features.npz"), "--image-path", str(root / "IJBC"), "--result-dir",
            str(root / "results"), "--job", job, "--target", "IJBC", *extra]


def test_features_flag_reproduces_the_table_of_the_run_that_saved_them(ijbc):
    root, _, out = ijbc
    assert eval_ijbc.main(_features_argv(root, out, "again")) == 0
    again = root / "results" / "again"
    for name in ("ijbc_result.json", "ijbc_1N_result.json"):
        assert json.loads((again / name).read_text()) == json.loads((out / name).read_text())
    np.testing.assert_array_equal(np.load(again / "ijbc.npy"), np.load(out / "ijbc.npy"))


def test_switches_change_the_pooling_as_documented(ijbc):
    root, _, out = ijbc
    argv = _features_argv(root, out, "switches", "--no-flip", "--no-norm-score", "--no-detector-score",
                          "--protocol", "1:1", "--table-rule", "interpolated")
    assert eval_ijbc.main(argv) == 0
    switched = root / "results" / "switches"
    expected = _direct_scores(out, root / "IJBC", flip=False, detector=False, normalize_images=True)
    np.testing.assert_allclose(np.load(switched / "ijbc.npy"), expected, atol=1e-6)
    assert not (switched / "ijbc_1N_result.json").exists()
    assert json.loads((switched / "ijbc_settings.json").read_text())["table_rule"] == "interpolated"


def _copy_dataset(ijbc, tmp_path):
    root, _, _ = ijbc
    shutil.copytree(root / "IJBC", tmp_path / "IJBC")
    return root / "model.pt", tmp_path / "IJBC"


def _run_expecting_error(argv, capsys):
    assert eval_ijbc.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _model_argv(weights, data, tmp_path, *extra):
    return ["--model-prefix", str(weights), "--network", "vit_nano", "--image-path", str(data),
            "--result-dir", str(tmp_path / "out"), "--num-workers", "0", "--device", "cpu", *extra]


def test_unreadable_weights_file_exits_2_with_a_clear_message(ijbc, tmp_path, capsys):
    _, data = _copy_dataset(ijbc, tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    err = _run_expecting_error(_model_argv(bad, data, tmp_path), capsys)
    assert "bad.pt' is not a readable PyTorch weights file" in err


def test_weights_of_another_network_exit_2_naming_the_fitting_one(ijbc, tmp_path, capsys):
    weights, data = _copy_dataset(ijbc, tmp_path)
    argv = _model_argv(weights, data, tmp_path)
    argv[argv.index("vit_nano")] = "vit_micro"
    assert "fits --network vit_nano" in _run_expecting_error(argv, capsys)


def test_missing_image_exits_2_naming_file_and_line(ijbc, tmp_path, capsys):
    weights, data = _copy_dataset(ijbc, tmp_path)
    (data / "loose_crop" / "5.jpg").unlink()
    err = _run_expecting_error(_model_argv(weights, data, tmp_path), capsys)
    assert "5.jpg' listed on line 5 of" in err and "ijbc_name_5pts_score.txt" in err


def test_undecodable_image_exits_2_naming_it(ijbc, tmp_path, capsys):
    weights, data = _copy_dataset(ijbc, tmp_path)
    (data / "loose_crop" / "7.jpg").write_bytes(b"broken")
    err = _run_expecting_error(_model_argv(weights, data, tmp_path), capsys)
    assert "7.jpg' (line 7 of" in err and "could not be decoded" in err


def test_malformed_pair_line_exits_2_naming_file_and_line(ijbc, tmp_path, capsys):
    root, _, out = ijbc
    _, data = _copy_dataset(ijbc, tmp_path)
    pairs = MetaPaths.of(data, "IJBC").pairs
    lines = pairs.read_text().splitlines()
    lines[9] = "1000 1007"
    pairs.write_text("\n".join(lines) + "\n")
    argv = _features_argv(root, out, "bad")
    argv[argv.index("--image-path") + 1] = str(data)
    err = _run_expecting_error(argv, capsys)
    assert "ijbc_template_pair_label.txt, line 10: expected three integers" in err


def test_one_to_many_without_its_csv_files_exits_2(ijbc, tmp_path, capsys):
    root, _, out = ijbc
    _, data = _copy_dataset(ijbc, tmp_path)
    MetaPaths.of(data, "IJBC").galleries["G2"].unlink()
    argv = _features_argv(root, out, "no1n", "--protocol", "1:N")
    argv[argv.index("--image-path") + 1] = str(data)
    assert "ijbc_1N_gallery_G2.csv" in _run_expecting_error(argv, capsys)


def test_features_without_flip_embeddings_exit_2_when_flip_is_on(ijbc, tmp_path, capsys):
    root, _, out = ijbc
    saved = np.load(out / "ijbc_features.npz")
    np.savez(tmp_path / "plain.npz", feats=saved["feats"], faceness=saved["faceness"])
    argv = _features_argv(root, out, "noflip")
    argv[argv.index("--features") + 1] = str(tmp_path / "plain.npz")
    assert "without the flip test" in _run_expecting_error(argv, capsys)


# ---- eval.guard: no table from non-finite or collapsed embeddings (issue 13) ----

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("array", ["feats", "feats_flip"])
def test_non_finite_saved_features_exit_2_and_write_nothing(ijbc, tmp_path, capsys, value, array):
    root, _, out = ijbc
    arrays = dict(np.load(out / "ijbc_features.npz"))
    arrays[array][[4, 9]] = value  # images 5.jpg and 10.jpg
    np.savez(tmp_path / "bad.npz", **arrays)
    argv = _features_argv(root, out, "bad")
    argv[argv.index("--features") + 1] = str(tmp_path / "bad.npz")
    argv[argv.index("--result-dir") + 1] = str(tmp_path / "results")
    err = _run_expecting_error(argv, capsys)
    assert "2 of 36 images of IJBC have non-finite embeddings (NaN or ±inf), the first '5.jpg' (line 5 of" in err
    assert "retry with --bf16 or without autocast" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_diverged_weights_exit_2_before_any_output(ijbc, tmp_path, capsys, value):
    _, model, _ = ijbc
    _, data = _copy_dataset(ijbc, tmp_path)
    torch.save(diverged_state_dict(model, value), tmp_path / "diverged.pt")
    err = _run_expecting_error(_model_argv(tmp_path / "diverged.pt", data, tmp_path), capsys)
    assert "36 of 36 images of IJBC have non-finite embeddings" in err and "diverged weights" in err
    assert not (tmp_path / "out").exists()


def test_non_finite_faceness_exits_2_unless_the_detector_score_is_off(ijbc, tmp_path, capsys):
    """A NaN faceness weight would zero its template's feature and score every pair of it 0."""
    root, _, out = ijbc
    arrays = dict(np.load(out / "ijbc_features.npz"))
    arrays["faceness"][6] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    argv = _features_argv(root, out, "bad", "--protocol", "1:1")
    argv[argv.index("--features") + 1] = str(tmp_path / "bad.npz")
    argv[argv.index("--result-dir") + 1] = str(tmp_path / "results")
    err = _run_expecting_error(argv, capsys)
    assert "1 faceness scores in" in err and "bad.npz are not finite, the first of '7.jpg' (line 7 of" in err
    assert not (tmp_path / "results").exists()
    assert eval_ijbc.main([*argv, "--no-detector-score"]) == 0


def test_collapsed_features_finish_with_one_warning(ijbc, tmp_path, caplog):
    """All images embedded alike: the tables are written (the scores differ only by rounding) with one
    warning that they mean nothing."""
    root, _, out = ijbc
    arrays = dict(np.load(out / "ijbc_features.npz"))
    arrays["feats"][:] = arrays["feats"][0]
    arrays["feats_flip"][:] = arrays["feats"][0]
    np.savez(tmp_path / "collapsed.npz", **arrays)
    argv = _features_argv(root, out, "collapsed")
    argv[argv.index("--features") + 1] = str(tmp_path / "collapsed.npz")
    assert eval_ijbc.main(argv) == 0
    assert ["the scores carry no identity information" in r.getMessage() for r in caplog.records] == [True]
    assert (root / "results" / "collapsed" / "ijbc_1N_result.json").is_file()


def test_settings_state_the_rank_rule(ijbc):
    _, _, out = ijbc
    assert json.loads((out / "ijbc_settings.json").read_text())["rank_rule"] == ijb.RANK_RULE


def test_every_result_file_gets_the_permissions_of_the_users_umask(ijbc):
    """Regression: ijbc.npy and the json results were written 0600 (mkstemp) while the plot got 0644."""
    root, _, out = ijbc
    previous = os.umask(0o027)
    try:
        assert eval_ijbc.main(_features_argv(root, out, "umask")) == 0
    finally:
        os.umask(previous)
    written = sorted((root / "results" / "umask").iterdir())
    assert {path.name for path in written} >= {"ijbc.npy", "ijbc_result.json", "ijbc.pdf", "ijbc.png",
                                               "ijbc_settings.json", "ijbc_1N_result.json"}
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in written} == \
        {path.name: 0o640 for path in written}


def test_features_run_imports_neither_pytorch_nor_scikit_learn(ijbc):
    """Scoring saved features starts in about a tenth of the time when PyTorch and scikit-learn stay out."""
    root, _, out = ijbc
    argv = _features_argv(root, out, "imports")
    code = ("import sys, eval_ijbc; assert eval_ijbc.main(sys.argv[1:]) == 0; "
            "print(sorted(m for m in ('torch', 'sklearn', 'cv2', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True,
                          cwd=Path(eval_ijbc.__file__).parent)
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_read_npz_equals_np_load(tmp_path, save):
    rng = np.random.default_rng(0)
    arrays = {"feats": rng.standard_normal((5, 3)).astype(np.float32), "fortran": np.asfortranarray(
        rng.standard_normal((4, 6))), "faceness": rng.uniform(size=5), "ids": np.arange(7, dtype=np.int16)}
    save(tmp_path / "a.npz", **arrays)
    got = eval_ijbc.read_npz(tmp_path / "a.npz")
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype
        np.testing.assert_array_equal(got[key], value)


def test_corrupt_features_file_exits_2_with_a_clear_message(ijbc, tmp_path, capsys):
    root, _, out = ijbc
    data = bytearray((out / "ijbc_features.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the feature array: the zip CRC catches it
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    argv = _features_argv(root, out, "corrupt")
    argv[1] = str(tmp_path / "bad.npz")
    assert eval_ijbc.main(argv) == 2
    assert "bad.npz' is not a readable .npz file" in capsys.readouterr().err


# ---- --onnx: an exported model through the same loader, batches and flip test ----

def test_onnx_model_gives_the_pytorch_features_and_tables(ijbc, tmp_path):
    root, model, out = ijbc
    export_onnx.export(model, tmp_path / "nano.onnx", opset=17, dynamic_batch=True)
    argv = ["--onnx", str(tmp_path / "nano.onnx"), "--image-path", str(root / "IJBC"), "--result-dir",
            str(tmp_path), "--job", "onnx", "--target", "IJBC", "--batch-size", "8", "--num-workers", "0",
            "--device", "cpu"]
    assert eval_ijbc.main(argv) == 0
    ours, reference = np.load(tmp_path / "onnx" / "ijbc_features.npz"), np.load(out / "ijbc_features.npz")
    for key in ("feats", "feats_flip"):
        np.testing.assert_allclose(ours[key], reference[key], atol=1e-4, rtol=1e-4)
    table = json.loads((tmp_path / "onnx" / "ijbc_result.json").read_text())
    expected = json.loads((out / "ijbc_result.json").read_text())
    assert table.keys() == expected.keys()
    assert all(abs(table[key] - expected[key]) <= 0.05 for key in expected)
    assert json.loads((tmp_path / "onnx" / "ijbc_settings.json").read_text())["onnx"] == str(tmp_path / "nano.onnx")


@pytest.mark.parametrize(("extra", "message"), [
    (["--model-prefix", "model.pt"], "--onnx and --model-prefix name two models"),
    (["--fp16"], "--fp16/--bf16 apply to PyTorch autocast"),
])
def test_onnx_with_a_pytorch_only_flag_is_a_usage_error(ijbc, tmp_path, capsys, extra, message):
    root, _, _ = ijbc
    argv = ["--onnx", str(tmp_path / "m.onnx"), "--image-path", str(root / "IJBC"), *extra]
    with pytest.raises(SystemExit) as exit_info:
        eval_ijbc.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ---- saved features and outputs checked like every other input (issue 26) ----

def _saved_with(tmp_path, out, **changes):
    arrays = dict(np.load(out / "ijbc_features.npz"))
    arrays.update(changes)
    np.savez(tmp_path / "edited.npz", **arrays)
    return str(tmp_path / "edited.npz")


@pytest.mark.parametrize("change, message", [
    # Regression: faceness -1 flipped its images in the pooling although the meta reader refuses it.
    (lambda a: {"faceness": np.where(np.arange(36) == 3, -1.0, a["faceness"]).astype(np.float32)},
     r"the faceness score of '4.jpg' is -1.0, not in \[0, 1\]"),
    (lambda a: {"faceness": np.full(36, 2.0, np.float32)}, r"the faceness score of '1.jpg' is 2.0, not in \[0, 1\]"),
    (lambda a: {"feats_flip": a["feats_flip"][:, :-1]},
     r"array feats_flip of .* has shape \[36, 31\], expected \[36, D\]"),
    (lambda a: {"feats": a["feats"].reshape(-1)}, r"array feats of .* has shape \[1152\], expected \[36, D\]"),
    (lambda a: {"faceness": a["faceness"][:-1]}, r"array faceness of .* has shape \[35\], expected \[36\]"),
])
def test_saved_features_of_the_wrong_shape_or_range_exit_2_naming_the_array(ijbc, tmp_path, capsys, change, message):
    root, _, out = ijbc
    argv = _features_argv(root, out, "edited")
    edited = change(dict(np.load(out / "ijbc_features.npz")))
    argv[argv.index("--features") + 1] = _saved_with(tmp_path, out, **edited)
    argv[argv.index("--result-dir") + 1] = str(tmp_path / "results")
    err = _run_expecting_error(argv, capsys)
    assert re.search(message, err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_features_with_onnx_and_a_result_dir_that_is_a_file_exit_2(ijbc, tmp_path, capsys):
    root, _, out = ijbc
    with pytest.raises(SystemExit) as stopped:  # argparse's exit for flags that contradict each other
        eval_ijbc.main([*_features_argv(root, out, "both"), "--onnx", "m.onnx"])
    assert stopped.value.code == 2 and "--features scores saved features without a model" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a folder")
    argv = _features_argv(root, out, "x")
    argv[argv.index("--result-dir") + 1] = str(tmp_path / "file")
    assert "file' is not a folder; give a --result-dir" in _run_expecting_error(argv, capsys)
