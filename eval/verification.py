"""10-fold verification accuracy on insightface .bin pair sets (lfw, cfp_fp, agedb_30), as insightface reports it.

Embeddings with the flip test (embedding of the image plus that of its mirror, then L2-normalised);
distance = squared L2 between the two embeddings of a pair; 10 folds in file order: each fold's
threshold (0 to 4 in steps of 0.01, predict "same" when distance < threshold) is the one with the best
accuracy on the other 9 folds, and the fold's accuracy is measured with it. Reported: mean and std of the
10 fold accuracies (fractions in [0, 1]) and XNorm, the mean L2 norm of the raw embeddings.

    python -m eval.verification --model-prefix model.pt --network vit_t --bins lfw.bin cfp_fp.bin
    python -m eval.verification --onnx model.onnx --bins lfw.bin
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backbones import load_backbone
from eval.embed import embed_batch
from eval.guard import NonFiniteEmbeddings, check_embeddings
from utils.binfile import check_bin_headers, decode_bin_images, load_bin
from utils.distributed import pick_device
from utils.errors import UserError, entry_point

log = logging.getLogger(__name__)

THRESHOLDS = np.arange(0, 4, 0.01)
NUM_FOLDS = 10


@dataclass(frozen=True)
class VerificationSet:
    """A decoded .bin: images [2P, 3, 112, 112] uint8 RGB (pair p is images 2p and 2p+1), issame [P]."""

    name: str
    images: torch.Tensor
    issame: np.ndarray

    @classmethod
    def load(cls, path: str | Path) -> VerificationSet:
        """Read and decode once; the training callback keeps the result for every evaluation."""
        path = Path(path)
        encoded, issame = read_checked(path)
        images = decode_bin_images(encoded, source=str(path))
        return cls(path.stem, images, np.asarray(issame, dtype=bool))


def read_checked(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """(encoded images, issame) of a .bin that gives a meaningful 10-fold accuracy: at least NUM_FOLDS pairs,
    genuine and impostor pairs both present, every image header 112x112; UserError otherwise. Reads no
    pixels, so training runs it on every rank before step 1."""
    encoded, issame = load_bin(path)
    fold_sizes(len(issame))
    if len(set(issame)) < 2:
        raise UserError(f"verification set '{path}' holds only {'genuine' if issame[0] else 'impostor'} pairs; "
                        "its accuracy would mean nothing: use a set with both kinds of pairs.")
    check_bin_headers(encoded, str(path))
    return encoded, issame


def fold_sizes(num_pairs: int, num_folds: int = NUM_FOLDS) -> np.ndarray:
    """Sizes of consecutive folds as sklearn's KFold(shuffle=False) makes them: the first ones get 1 more."""
    if num_pairs < num_folds:
        raise UserError(f"a verification set needs at least {num_folds} pairs for {num_folds}-fold "
                        f"accuracy, this one has {num_pairs}; use a larger set.")
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[:num_pairs % num_folds] += 1
    return sizes


def kfold_accuracy(distances: np.ndarray, issame: np.ndarray, thresholds: np.ndarray = THRESHOLDS,
                   num_folds: int = NUM_FOLDS) -> np.ndarray:
    """Accuracy of each fold [F] with the threshold chosen on the other folds (first best on ties).

    distances, issame: [P]. Counting correct predictions per fold and threshold once makes every
    "other 9 folds" accuracy a subtraction.
    """
    sizes = fold_sizes(len(distances), num_folds)
    correct = (distances[:, None] < thresholds[None, :]) == issame[:, None]  # [P, thresholds]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # [F]
    fold_correct = np.add.reduceat(correct.astype(np.int64), starts, axis=0)  # [F, thresholds]
    train_accuracy = (fold_correct.sum(axis=0) - fold_correct) / (len(distances) - sizes)[:, None]
    best = np.argmax(train_accuracy, axis=1)  # [F], first maximum as np.argmax in insightface
    return fold_correct[np.arange(num_folds), best] / sizes


def embed(model: torch.nn.Module, images: torch.Tensor, device: torch.device, *, batch_size: int,
          amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the images and of their mirrors, each [M, D] float32 (the model's mode is unchanged)."""
    plain, mirrored = [], []
    for start in range(0, len(images), batch_size):
        batch_plain, batch_mirrored = embed_batch(model, images[start:start + batch_size], device,
                                                  amp_dtype=amp_dtype)
        plain.append(batch_plain)
        mirrored.append(batch_mirrored)
    return np.concatenate(plain), np.concatenate(mirrored)


def accuracy_from_embeddings(plain: np.ndarray, mirrored: np.ndarray, issame: np.ndarray,
                             num_folds: int = NUM_FOLDS) -> dict[str, float]:
    """{accuracy, std, xnorm} from the embeddings [2P, D] of a pair set's images and of their mirrors."""
    xnorm = float(np.concatenate([np.linalg.norm(plain, axis=1), np.linalg.norm(mirrored, axis=1)]).mean())
    combined = plain.astype(np.float64) + mirrored
    combined /= np.maximum(np.linalg.norm(combined, axis=1, keepdims=True), 1e-12)
    distances = np.sum((combined[0::2] - combined[1::2]) ** 2, axis=1)  # [P] squared L2 per pair
    accuracies = kfold_accuracy(distances, issame, num_folds=num_folds)
    return {"accuracy": float(accuracies.mean()), "std": float(accuracies.std()), "xnorm": xnorm}


def evaluate(model: torch.nn.Module, data: VerificationSet, device: torch.device, *, batch_size: int = 64,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """10-fold accuracy of `model` on one set: {accuracy, std, xnorm}; the model's train/eval mode is
    restored afterwards. Raises eval.guard.NonFiniteEmbeddings (a UserError) when an embedding is not
    finite, and logs a warning when they are degenerate."""
    was_training = model.training
    model.eval()
    try:
        plain, mirrored = embed(model, data.images, device, batch_size=batch_size, amp_dtype=amp_dtype)
    finally:
        model.train(was_training)
    check_embeddings(plain, mirrored, source=f"{data.name}.bin",
                     describe=lambda row: f"image {row} (pair {row // 2})")
    return accuracy_from_embeddings(plain, mirrored, data.issame)


class TrainingVerifier:
    """The training callback: every `verbose` steps rank 0 verifies the bare backbone on `val_targets`
    (`<rec>/<name>.bin`), logs accuracy, std, XNorm and the best accuracy so far, and writes scalars.
    Non-finite embeddings log eval.guard's message as an error instead, record nothing, and training
    goes on."""

    def __init__(self, sets: list[VerificationSet], batch_size: int, device: torch.device, enabled: bool):
        self.sets = sets
        self.batch_size = batch_size
        self.device = device
        self.enabled = enabled

    @classmethod
    def from_config(cls, cfg, ctx) -> TrainingVerifier:
        sets = [VerificationSet.load(Path(cfg.rec) / f"{name}.bin") for name in cfg.val_targets] \
            if ctx.is_main else []
        return cls(sets, cfg.batch_size, ctx.device, ctx.is_main)

    def __call__(self, run, scalars) -> dict[str, dict[str, float]]:
        """Evaluate `run.backbone`; updates `run.best[name]`; returns {name: result}."""
        results = {}
        if not self.enabled:
            return results
        for data in self.sets:
            try:
                result = evaluate(run.backbone, data, self.device, batch_size=self.batch_size)
            except NonFiniteEmbeddings as exc:  # no accuracy, no best; the loss guard owns divergence
                log.error("[%s][%d] %s", data.name, run.step, exc)
                continue
            run.best[data.name] = max(run.best.get(data.name, 0.0), result["accuracy"])
            log.info("[%s][%d] XNorm: %f  Accuracy-Flip: %1.5f+-%1.5f  Highest Accuracy-Flip: %1.5f",
                     data.name, run.step, result["xnorm"], result["accuracy"], result["std"],
                     run.best[data.name])
            scalars.add({f"verification/{data.name}/accuracy": result["accuracy"],
                         f"verification/{data.name}/xnorm": result["xnorm"]}, run.step)
            results[data.name] = result
        return results


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="10-fold verification accuracy on .bin pair sets")
    model_file = parser.add_mutually_exclusive_group(required=True)
    model_file.add_argument("--model-prefix", help="backbone weights (.pt state_dict); needs --network")
    model_file.add_argument("--onnx", help="an ONNX model (tools/export_onnx.py), run by ONNX Runtime")
    parser.add_argument("--network", help="backbone name (backbones.get_model), with --model-prefix")
    parser.add_argument("--bins", nargs="+", required=True, help=".bin files, e.g. lfw.bin cfp_fp.bin")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA if available)")
    args = parser.parse_args(argv)
    if args.model_prefix and not args.network:
        parser.error("--model-prefix needs --network (the backbone name, e.g. vit_t)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    device = pick_device(0, args.device)
    if args.onnx:
        from eval.onnx_backbone import load_onnx_backbone

        model = load_onnx_backbone(args.onnx, device)
    else:
        model = load_backbone(args.network, args.model_prefix).to(device)
    for path in args.bins:
        result = evaluate(model, VerificationSet.load(path), device, batch_size=args.batch_size)
        print(f"{Path(path).stem}: accuracy {result['accuracy'] * 100:.3f} ± {result['std'] * 100:.3f} % "
              f"(10-fold, flip), XNorm {result['xnorm']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
