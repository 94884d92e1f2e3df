"""Verification on .bin sets: 10-fold accuracy against insightface's loop, the flip embeddings, the model
mode, the training callback and the CLI's errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from backbones import get_model
from eval import verification
from eval.verification import TrainingVerifier, VerificationSet, accuracy_from_embeddings, kfold_accuracy
from tests.diverged import collapsed_state_dict, diverged_state_dict
from utils.binfile import save_bin
from utils.errors import UserError
from utils.opencv import cv2


def _loop_fold_accuracy(distances, issame, num_folds=10):
    """insightface's calculate_roc: per fold, per threshold, accuracy on the other folds, then the test fold."""
    thresholds = np.arange(0, 4, 0.01)
    accuracies = []
    for train, test in KFold(n_splits=num_folds, shuffle=False).split(np.arange(len(distances))):
        train_accuracy = [np.mean((distances[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_accuracy))]
        accuracies.append(np.mean((distances[test] < best) == issame[test]))
    return np.array(accuracies)


def _pair_embeddings(seed, num_pairs, dim=16, noise=1.0):
    """Embeddings [2P, D] of image and mirror where same-identity pairs share a centre."""
    rng = np.random.default_rng(seed)
    issame = rng.random(num_pairs) < 0.5
    first = rng.standard_normal((num_pairs, dim))
    second = np.where(issame[:, None], first, rng.standard_normal((num_pairs, dim)))
    plain = np.empty((2 * num_pairs, dim))
    plain[0::2] = first + noise * rng.standard_normal((num_pairs, dim))
    plain[1::2] = second + noise * rng.standard_normal((num_pairs, dim))
    mirrored = plain + 0.3 * rng.standard_normal(plain.shape)
    return plain.astype(np.float32), mirrored.astype(np.float32), issame


@pytest.mark.parametrize("seed, num_pairs", [(0, 603), (1, 600), (2, 57)])
def test_kfold_accuracy_equals_insightfaces_loop(seed, num_pairs):
    rng = np.random.default_rng(seed)
    issame = rng.random(num_pairs) < 0.5
    distances = np.round(np.where(issame, rng.uniform(0, 2.5, num_pairs), rng.uniform(1, 4, num_pairs)), 2)
    np.testing.assert_allclose(kfold_accuracy(distances, issame), _loop_fold_accuracy(distances, issame),
                               atol=1e-12)


def test_accuracy_from_embeddings_equals_brute_force():
    plain, mirrored, issame = _pair_embeddings(3, 301)
    result = accuracy_from_embeddings(plain, mirrored, issame)
    combined = plain.astype(np.float64) + mirrored
    combined = np.stack([row / np.linalg.norm(row) for row in combined])
    distances = np.array([np.sum((combined[2 * p] - combined[2 * p + 1]) ** 2) for p in range(301)])
    folds = _loop_fold_accuracy(distances, issame)
    assert result["accuracy"] == pytest.approx(folds.mean(), abs=1e-12)
    assert result["std"] == pytest.approx(folds.std(), abs=1e-12)
    norms = [np.linalg.norm(row) for row in np.concatenate([plain, mirrored])]
    assert result["xnorm"] == pytest.approx(np.mean(norms), rel=1e-6)
    assert 0.6 < result["accuracy"] < 1.0


def test_fewer_pairs_than_folds_is_an_error():
    with pytest.raises(UserError, match="at least 10 pairs"):
        kfold_accuracy(np.zeros(9), np.zeros(9, dtype=bool))


def _write_bin(path, num_pairs, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2 * num_pairs, 112, 112, 3), dtype=np.uint8)  # RGB
    encoded = [cv2.imencode(".png", image[:, :, ::-1])[1].tobytes() for image in images]
    issame = [bool(flag) for flag in rng.random(num_pairs) < 0.5]
    save_bin(path, encoded, issame)
    return images, issame


def test_verification_set_load_decodes_rgb_images_and_labels(tmp_path):
    images, issame = _write_bin(tmp_path / "lfw.bin", 12)
    data = VerificationSet.load(tmp_path / "lfw.bin")
    assert data.name == "lfw" and data.issame.tolist() == issame
    assert data.images.dtype == torch.uint8 and data.images.shape == (24, 3, 112, 112)
    np.testing.assert_array_equal(data.images.permute(0, 2, 3, 1).numpy(), images)


def _tiny_model(network: str = "vit_nano"):
    torch.manual_seed(0)
    return get_model(network, num_features=24)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_uses_flip_embeddings_in_eval_mode_and_restores_the_mode(tmp_path, training):
    _write_bin(tmp_path / "set.bin", 10)
    data = VerificationSet.load(tmp_path / "set.bin")
    model = _tiny_model().train(training)
    result = verification.evaluate(model, data, torch.device("cpu"), batch_size=7)
    assert model.training == training
    model.eval()
    with torch.no_grad():
        x = data.images.float() / 127.5 - 1.0  # [2P, 3, H, W]
        plain, mirrored = model(x).numpy(), model(x.flip(3)).numpy()
    expected = accuracy_from_embeddings(plain, mirrored, data.issame)
    for key in ("accuracy", "std"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9)
    assert result["xnorm"] == pytest.approx(expected["xnorm"], rel=1e-5)


class _RecordingScalars:
    def __init__(self):
        self.added = []

    def add(self, values, step):
        self.added.append((dict(values), step))


def test_training_verifier_updates_best_and_scalars_on_rank_0_only(tmp_path):
    _write_bin(tmp_path / "lfw.bin", 10)
    cfg = SimpleNamespace(rec=str(tmp_path), val_targets=("lfw",), batch_size=8)
    main = SimpleNamespace(is_main=True, device=torch.device("cpu"))
    run = SimpleNamespace(backbone=_tiny_model(), step=20, best={"lfw": 2.0})
    scalars = _RecordingScalars()
    results = TrainingVerifier.from_config(cfg, main)(run, scalars)
    assert run.best["lfw"] == 2.0  # a higher earlier best is kept
    assert scalars.added == [({"verification/lfw/accuracy": results["lfw"]["accuracy"],
                               "verification/lfw/xnorm": results["lfw"]["xnorm"]}, 20)]
    other = SimpleNamespace(is_main=False, device=torch.device("cpu"))
    assert TrainingVerifier.from_config(cfg, other)(run, scalars) == {}
    assert len(scalars.added) == 1


@pytest.mark.parametrize("network", ["vit_nano", "mbf"])
def test_cli_prints_accuracy_per_set(tmp_path, capsys, network):
    _write_bin(tmp_path / "agedb_30.bin", 10)
    torch.save(_tiny_model(network).state_dict(), tmp_path / "model.pt")
    argv = ["--model-prefix", str(tmp_path / "model.pt"), "--network", network, "--bins",
            str(tmp_path / "agedb_30.bin"), "--device", "cpu"]
    assert verification.main(argv) == 0
    assert capsys.readouterr().out.startswith("agedb_30: accuracy ")


def test_cli_with_a_bad_weights_file_exits_2(tmp_path, capsys):
    _write_bin(tmp_path / "lfw.bin", 10)
    (tmp_path / "model.pt").write_bytes(b"garbage")
    argv = ["--model-prefix", str(tmp_path / "model.pt"), "--network", "vit_nano", "--bins",
            str(tmp_path / "lfw.bin"), "--device", "cpu"]
    assert verification.main(argv) == 2
    err = capsys.readouterr().err
    assert "model.pt' is not a readable PyTorch weights file" in err and "Traceback" not in err


# ---- eval.guard: no accuracy from non-finite or collapsed embeddings (issue 13) ----

def _cli_argv(tmp_path, state_dict):
    _write_bin(tmp_path / "agedb_30.bin", 10)
    torch.save(state_dict, tmp_path / "model.pt")
    return ["--model-prefix", str(tmp_path / "model.pt"), "--network", "vit_nano", "--bins",
            str(tmp_path / "agedb_30.bin"), "--device", "cpu"]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_cli_with_diverged_weights_exits_2_without_an_accuracy(tmp_path, capsys, value):
    assert verification.main(_cli_argv(tmp_path, diverged_state_dict(_tiny_model(), value))) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: 20 of 20 images of agedb_30.bin have non-finite embeddings "
                                   "(NaN or ±inf), the first image 0 (pair 0); likely causes: diverged weights")
    assert captured.out == "" and len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("bias, reason", [(0.3, "within 1e-06 of one direction"), (0.0, "zero norm")])
def test_cli_with_a_collapsed_model_warns_once(tmp_path, capsys, caplog, bias, reason):
    assert verification.main(_cli_argv(tmp_path, collapsed_state_dict(_tiny_model(), bias))) == 0
    messages = [record.getMessage() for record in caplog.records if "unverified" not in record.getMessage()]
    assert len(messages) == 1 and reason in messages[0] and "no identity information" in messages[0]


def test_training_verifier_logs_non_finite_embeddings_and_records_nothing(tmp_path, caplog):
    """Training goes on (the loss guard owns divergence); no best accuracy and no scalar from the NaNs."""
    _write_bin(tmp_path / "lfw.bin", 10)
    cfg = SimpleNamespace(rec=str(tmp_path), val_targets=("lfw",), batch_size=8)
    model = _tiny_model()
    model.load_state_dict(diverged_state_dict(model, np.nan))
    run = SimpleNamespace(backbone=model, step=20, best={})
    scalars = _RecordingScalars()
    verifier = TrainingVerifier.from_config(cfg, SimpleNamespace(is_main=True, device=torch.device("cpu")))
    assert verifier(run, scalars) == {}
    assert run.best == {} and scalars.added == []
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("[lfw][20] 20 of 20 images of lfw.bin have non-finite embeddings")
