"""eval.guard: non-finite embeddings stop with the count, the first image and the causes; degenerate ones
warn. Guards against the tables of ties that NaN or collapsed embeddings produced (issue 13)."""

import logging

import numpy as np
import pytest

from eval import guard
from eval.guard import NonFiniteEmbeddings, check_embeddings, degenerate_reason, non_finite_rows
from utils.errors import UserError


def _embeddings(seed, num_rows=50, dim=8):
    return np.random.default_rng(seed).standard_normal((num_rows, dim)).astype(np.float32)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("poisoned", [0, 1])  # the images, or their mirrors
def test_non_finite_rows_are_counted_and_the_first_is_named(value, poisoned, monkeypatch):
    monkeypatch.setattr(guard, "BLOCK_ELEMENTS", 5 * 8)  # 5 rows per block: bad rows in blocks 3 and 8
    arrays = [_embeddings(0), _embeddings(1)]
    arrays[poisoned][17, 3] = value
    arrays[poisoned][41, 0] = value
    expected = np.zeros(50, dtype=bool)
    expected[[17, 41]] = True
    np.testing.assert_array_equal(non_finite_rows(*arrays), expected)
    with pytest.raises(NonFiniteEmbeddings) as error:
        check_embeddings(*arrays, source="IJBC", describe=lambda row: f"'{row + 1}.jpg'")
    message = str(error.value)
    assert isinstance(error.value, UserError)
    assert message.startswith("2 of 50 images of IJBC have non-finite embeddings (NaN or ±inf), the first '18.jpg'")
    assert guard.NON_FINITE_CAUSES in message and "\n" not in message


def test_finite_random_embeddings_pass_silently(caplog):
    with caplog.at_level(logging.WARNING):
        check_embeddings(_embeddings(2), _embeddings(3), source="lfw.bin")
    assert caplog.records == []


def _collapsed(seed, num_rows=50, dim=8):
    """One direction at random positive scales, rounded to float32 like a network's output."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    return (rng.uniform(0.5, 20.0, (num_rows, 1)) * direction).astype(np.float32)


@pytest.mark.parametrize("case, reason", [
    ("one direction", "within 1e-06 of one direction"),
    ("one direction, some zero", "within 1e-06 of one direction"),
    ("all zero", "all 50 embeddings have zero norm"),
])
def test_degenerate_embeddings_log_one_warning(case, reason, caplog, monkeypatch):
    monkeypatch.setattr(guard, "BLOCK_ELEMENTS", 5 * 8)
    feats = np.zeros((50, 8), np.float32) if case == "all zero" else _collapsed(4)
    if case == "one direction, some zero":
        feats[[0, 33]] = 0.0
    with caplog.at_level(logging.WARNING):
        check_embeddings(feats, feats, source="IJBC")
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert reason in caplog.records[0].getMessage()
    assert "the scores carry no identity information" in caplog.records[0].getMessage()


@pytest.mark.parametrize("row", [1, 49])  # in the first block, in the last block
def test_one_other_direction_is_not_degenerate(row, monkeypatch):
    monkeypatch.setattr(guard, "BLOCK_ELEMENTS", 5 * 8)
    feats = _collapsed(5).astype(np.float64)
    feats[row] += 1e-4 * np.linalg.norm(feats[row])  # 1e-4 off the common direction: above the tolerance
    assert degenerate_reason(feats) is None


def test_two_blocks_in_two_directions_are_not_degenerate(monkeypatch):
    monkeypatch.setattr(guard, "BLOCK_ELEMENTS", 5 * 8)
    feats = np.concatenate([_collapsed(9, num_rows=25), _collapsed(10, num_rows=25)])
    assert degenerate_reason(feats) is None


def test_the_direction_is_that_of_the_sum_of_the_arrays():
    feats = _collapsed(6)
    assert degenerate_reason(feats) is not None
    assert degenerate_reason(feats, _embeddings(7)) is None  # images agree, their mirrors do not


def test_two_equal_embeddings_are_not_called_a_collapse():
    feats = _collapsed(8, num_rows=2)  # e.g. the same face given twice to --compare
    assert degenerate_reason(feats) is None
    assert degenerate_reason(np.zeros((2, 8))) == "all 2 embeddings have zero norm"


def test_an_empty_set_is_not_called_degenerate():
    assert degenerate_reason(np.zeros((0, 8), np.float32)) is None
