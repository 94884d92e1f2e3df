"""Exact image and identity counts above 2^24 images, where the header record's float32 label is rounded:
sparse sets (tests.rec_utils.write_sparse_rec) at WebFace42M's counts and around 2^24."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dataset as dataset_module
from dataset import RecordDataset
from tests.rec_utils import write_sparse_rec
from tools.pack_rec import header_record
from utils.errors import UserError
from utils.recordio import (
    IndexedRecordReader,
    RecordIOError,
    exact_header_range,
    float32_preimage,
    is_identity_record,
    unpack,
)

FIXTURES = Path(__file__).parent / "data" / "recordio"
WEBFACE42M = (42_474_557, 2_059_906)  # images, identities


def face_payload() -> bytes:
    """A real 112x112 JPEG (record 1 of the MXNet-written fixture)."""
    return unpack(IndexedRecordReader(FIXTURES / "ms1m_style" / "train.rec").read(1))[1]


def spread(num_images: int, num_classes: int) -> np.ndarray:
    """Block sizes of `num_classes` identities sharing `num_images` images as evenly as possible."""
    sizes = np.full(num_classes, num_images // num_classes, dtype=np.int64)
    sizes[:num_images % num_classes] += 1
    return sizes


def open_sparse(monkeypatch, folder: Path, reader) -> RecordDataset:
    """RecordDataset over a sparse reader (the .idx it would parse is replaced by computed offsets)."""
    monkeypatch.setattr(dataset_module, "IndexedRecordReader", lambda *paths: reader)
    return RecordDataset(folder, decode=False)


@pytest.mark.parametrize(("value", "expected"), [
    (2**24 - 1, range(2**24 - 1, 2**24)),
    (2**24, range(2**24, 2**24 + 2)),  # 2^24 + 1 rounds (to even) down to 2^24
    (2**24 + 2, range(2**24 + 2, 2**24 + 3)),  # 2^24 + 3 rounds up to 2^24 + 4 (even)
    (2**24 + 4, range(2**24 + 3, 2**24 + 6)),
    (2**25 - 2, range(2**25 - 2, 2**25 - 1)),  # odd mantissa: both halfway neighbours round away from it
    (2**25, range(2**25 - 1, 2**25 + 3)),  # spacing 2 below 2^25, 4 above: one below and two above
    (2**25 + 4, range(2**25 + 3, 2**25 + 6)),  # 2^25 + 6 rounds (to even) up to 2^25 + 8
    (42474560, range(42474558, 42474563)),  # float32(42474558) == 42474560: pack_rec's header of WebFace42M
    (0.5, range(0)),
])
def test_float32_preimage_lists_every_whole_number_that_rounds_to_the_value(value, expected):
    assert float32_preimage(value) == expected
    assert all(float(np.float32(n)) == value for n in expected)


def test_webface42m_counts_are_exact_though_the_header_is_rounded(tmp_path, monkeypatch):
    """pack_rec's header of WebFace42M reads back as (42474560, 44534464): 2,059,904 identities, and the
    project refused its own output against `property`."""
    num_images, num_classes = WEBFACE42M
    reader = write_sparse_rec(tmp_path / "data", spread(num_images, num_classes), face_payload())
    label = unpack(reader.read(0))[0].label
    assert label == (42474560.0, 44534464.0)  # float32 of (42474558, 44534464)
    (tmp_path / "data" / "property").write_text(f"{num_classes},112,112\n")
    data = open_sparse(monkeypatch, tmp_path / "data", reader)
    assert (len(data), data.num_classes) == WEBFACE42M
    assert int(data.image_keys[-1]) == num_images and data.image_offsets[-1] == reader.offset_of(num_images)


@pytest.mark.parametrize("num_images", [2**24 - 3, 2**24 - 2, 2**24 - 1, 2**24, 2**24 + 1, 2**24 + 2,
                                        2**25 - 3, 2**25 - 2, 2**25 - 1, 2**25, 2**25 + 1, 2**25 + 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_counts_are_exact_around_two_to_the_24(tmp_path, num_images, num_classes):
    reader = write_sparse_rec(tmp_path / "data", spread(num_images, num_classes), face_payload())
    label = unpack(reader.read(0))[0].label
    assert exact_header_range(reader, label) == (num_images + 1, num_images + 1 + num_classes)


def test_counts_without_property_come_from_the_identity_records(tmp_path, monkeypatch):
    num_images, num_classes = 2**24 + 1, 3  # header (2^24 + 2, 2^24 + 5) reads back as (2^24 + 2, 2^24 + 4)
    reader = write_sparse_rec(tmp_path / "data", spread(num_images, num_classes), face_payload())
    data = open_sparse(monkeypatch, tmp_path / "data", reader)
    assert (len(data), data.num_classes) == (num_images, num_classes)
    labels = [data._encoded(index)[1] for index in (0, len(data) - 1)]
    assert labels == [0, 2]  # the last image key is an image of the last identity, not an identity record


def test_header_disagreeing_beyond_rounding_is_the_clear_error(tmp_path, monkeypatch):
    num_images, num_classes = WEBFACE42M
    wrong = header_record(num_images - 40, num_classes + 40)  # same end, first identity 40 keys early
    reader = write_sparse_rec(tmp_path / "data", spread(num_images, num_classes), face_payload(), header=wrong)
    with pytest.raises(RecordIOError, match=r"do not start at any key within float32 rounding of 42474520"):
        open_sparse(monkeypatch, tmp_path / "data", reader)


def test_property_disagreeing_beyond_rounding_is_still_refused(tmp_path, monkeypatch):
    num_images, num_classes = 2**24 + 7, 5
    reader = write_sparse_rec(tmp_path / "data", spread(num_images, num_classes), face_payload())
    (tmp_path / "data" / "property").write_text(f"{num_classes - 2},112,112\n")
    with pytest.raises(UserError, match=r"says 3 classes but the header record .* lists 5 identities"):
        open_sparse(monkeypatch, tmp_path / "data", reader)


def test_mxnet_written_records_change_kind_where_the_header_says():
    """What the exact counts rely on, in a file MXNet 1.9 wrote: images, then identity records, then no key."""
    reader = IndexedRecordReader(FIXTURES / "ms1m_style" / "train.rec")
    first_identity, end = (int(v) for v in unpack(reader.read(0))[0].label)
    kinds = [is_identity_record(reader, key) for key in range(end + 1)]
    assert kinds == [False] * first_identity + [True] * (end - first_identity) + [False]
