"""The check between embeddings and any number computed from them: non-finite stops, degenerate warns.

Every evaluation path calls `check_embeddings` before it scores, prints or writes anything: IJB 1:1 and
1:N (network and --features), .bin verification (CLI and training callback) and tools.inference. A NaN
embedding otherwise turns into a zero template feature, every score 0 and a table of ties; a set of
embeddings that all point one way scores every pair alike. Legend: N images, D embedding size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from utils.errors import UserError

log = logging.getLogger(__name__)

NON_FINITE_CAUSES = ("likely causes: diverged weights, a --network that does not fit the weights, or fp16 "
                     "overflow (retry with --bf16 or without autocast)")
# Unit embeddings all within this L2 distance of one direction give every pair the same score.
DIRECTION_TOLERANCE = 1e-6
# Fewer embeddings sharing a direction are no evidence of a collapse (the same face given twice).
MIN_ROWS_FOR_DIRECTION = 3
# Elements per block of rows: a bool or float64 scratch block of a few MiB instead of one of N x D.
BLOCK_ELEMENTS = 2**20


class NonFiniteEmbeddings(UserError):
    """Embeddings holding NaN or ±inf; the message names how many images, the first one and the causes."""


def _row_blocks(num_rows: int, dim: int):
    step = max(1, BLOCK_ELEMENTS // max(dim, 1))
    return (slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step))


def non_finite_rows(*arrays: np.ndarray) -> np.ndarray:
    """[N] bool: rows where any of the [N, D] arrays holds NaN or ±inf."""
    num_rows, dim = arrays[0].shape
    bad = np.zeros(num_rows, dtype=bool)
    for rows in _row_blocks(num_rows, dim):
        for array in arrays:
            bad[rows] |= ~np.isfinite(array[rows]).all(axis=1)
    return bad


def degenerate_reason(*arrays: np.ndarray, tolerance: float = DIRECTION_TOLERANCE) -> str | None:
    """Why the finite embeddings (the sum of the [N, D] arrays, as scored) carry no identity, or None.

    Degenerate: every embedding has zero norm, or (from MIN_ROWS_FOR_DIRECTION rows on) every non-zero
    one lies within `tolerance` (L2, after normalising) of the first non-zero one. Stops at the first
    block that shows two directions.
    """
    num_rows, dim = arrays[0].shape
    if num_rows == 0:
        return None  # nothing is scored
    check_direction = num_rows >= MIN_ROWS_FOR_DIRECTION
    reference = None  # [D] unit direction of the first non-zero embedding
    for rows in _row_blocks(num_rows, dim):
        block = np.sum([array[rows] for array in arrays], axis=0, dtype=np.float64)  # [b, D]
        norms = np.linalg.norm(block, axis=1)  # [b]
        units = block[norms > 0] / norms[norms > 0, None]  # [b', D]
        if len(units) == 0:
            continue
        if reference is None:
            reference = units[0]
        if not check_direction or np.linalg.norm(units - reference, axis=1).max() > tolerance:
            return None
    if reference is None:
        return f"all {num_rows} embeddings have zero norm"
    return f"all {num_rows} embeddings lie within {tolerance:g} of one direction (or are zero)"


def check_embeddings(*arrays: np.ndarray, source: str, describe: Callable[[int], str] = lambda row: f"row {row}",
                     unit: str = "images") -> None:
    """Refuse non-finite embeddings; log one warning for degenerate ones.

    Args:
        arrays: [N, D] embeddings of the same N images (e.g. of the images and of their mirrors); image i
            is affected when any array's row i is not finite.
        source: what the images are, for the message ("IJBC", "lfw.bin").
        describe: row index -> how a user finds that image ("'12.jpg' (line 12 of ...)").
        unit: the plural noun for the rows.
    Raises:
        NonFiniteEmbeddings (a UserError, exit 2 in every CLI) naming the count, the first image and the
        likely causes.
    """
    bad = non_finite_rows(*arrays)
    if bad.any():
        first = int(np.argmax(bad))
        raise NonFiniteEmbeddings(
            f"{int(bad.sum())} of {len(bad)} {unit} of {source} have non-finite embeddings (NaN or ±inf), the "
            f"first {describe(first)}; {NON_FINITE_CAUSES}.")
    reason = degenerate_reason(*arrays)
    if reason is not None:
        log.warning("degenerate embeddings of %s: %s, so the scores carry no identity information; check the "
                    "weights and --network.", source, reason)


def check_model_output(output, num_rows: int, *, source: str, width: int | None = None):
    """`output` if it is one embedding array [num_rows, D] (a tensor or ndarray; D == `width` when given);
    else a UserError naming the model `source`, the expected and the actual shape.

    Called on every forward pass of an evaluation or inference (PyTorch and ONNX alike), before a row is
    used: a tuple, a rank-1 or rank-4 output, or a reshape to [1, -1] otherwise fails later as a
    traceback or silently drops images.
    """
    shape = tuple(output.shape) if hasattr(output, "shape") else None
    expected = f"[{num_rows}, {width if width is not None else 'D'}]"
    if shape is None:
        raise UserError(f"model {source} returned a {type(output).__name__}, not one embedding array {expected}; "
                        "export or load a backbone whose forward returns the embedding only.")
    if len(shape) != 2 or shape[0] != num_rows or (width is not None and shape[1] != width):
        raise UserError(f"model {source} returned shape {list(shape)} for {num_rows} images, expected "
                        f"{expected}; use a face embedding model (tools/export_onnx.py writes one).")
    return output


def unit_rows(embeddings: np.ndarray, *, source: str, describe: Callable[[int], str] = lambda row: f"row {row}"
              ) -> np.ndarray:
    """[N, D] finite embeddings -> the same rows scaled to unit L2 norm, as float32.

    Raises:
        UserError naming the first image whose embedding has zero norm: it has no direction, so its cosine
        similarity to anything is undefined (a NaN, not a number to quote).
    """
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1, keepdims=True)  # [N, 1]
    zero = norms[:, 0] == 0
    if zero.any():
        raise UserError(f"{int(zero.sum())} of {len(zero)} embeddings of {source} have zero norm, the first "
                        f"{describe(int(np.argmax(zero)))}, so no cosine similarity is defined for them; "
                        "check the weights and --network.")
    return (embeddings / norms).astype(np.float32)


__all__ = ["DIRECTION_TOLERANCE", "MIN_ROWS_FOR_DIRECTION", "NON_FINITE_CAUSES", "NonFiniteEmbeddings",
           "check_embeddings", "check_model_output", "degenerate_reason", "non_finite_rows", "unit_rows"]
