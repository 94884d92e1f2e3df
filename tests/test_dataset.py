"""Datasets, the resumable distributed sampler, the loader and on-device batch preparation (CPU)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from dataset import (
    DataError,
    DistributedResumableSampler,
    ImageFolderDataset,
    RecordDataset,
    SyntheticDataset,
    build_dataset,
    build_loader,
    check_input_size,
    collate_encoded,
    resolve_data_counts,
    scan_image_folder,
)
from device_input import GpuJpegDecoder
from utils.errors import UserError
from utils.opencv import cv2
from utils.recordio import IndexedRecordWriter, IRHeader, pack, unpack

FIXTURES = Path(__file__).parent / "data" / "recordio"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def random_face(rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """A smooth random RGB image [H, W, 3] (JPEG-friendly)."""
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    return cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.uint8)


def write_folder(root: Path, counts: list[int], size: int = 112, seed: int = 0) -> dict[str, np.ndarray]:
    """Identity folders id_0, id_1, ... of PNG images; returns {relative path: RGB array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, count in enumerate(counts):
        (root / f"id_{label}").mkdir(parents=True)
        for index in range(count):
            rgb = random_face(rng, size)
            relative = f"id_{label}/{index}.png"
            cv2.imwrite(str(root / relative), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            written[relative] = rgb
    return written


def write_rec(folder: Path, samples: list[tuple[bytes, float]], header: bool = True,
              prop: str | None = None) -> None:
    """A small .rec in insightface's layout (or with no header) holding `samples` = [(payload, label)]."""
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = int(max(label for _, label in samples)) + 1
    first_identity = len(samples) + 1
    with IndexedRecordWriter(folder / "train.rec", folder / "train.idx") as writer:
        if header:
            writer.write(0, pack(IRHeader(0, (first_identity, first_identity + num_classes), 0, 0)))
        for key, (payload, label) in enumerate(samples, start=1):
            writer.write(key, pack(IRHeader(0, label, key, 0), payload))
        if header:  # identity records: label -> [first image key, end image key)
            for label in range(num_classes):
                keys = [key for key, (_, value) in enumerate(samples, start=1) if int(value) == label] or [0]
                writer.write(first_identity + label, pack(IRHeader(0, (keys[0], keys[-1] + 1), 0, 0)))
    if prop is not None:
        (folder / "property").write_text(prop)


def png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


# ---- RecordDataset ----

def test_insightface_layout_gives_images_labels_and_counts():
    expected = EXPECTED["ms1m_style"]
    dataset = RecordDataset(FIXTURES / "ms1m_style")
    assert dataset.has_header and len(dataset) == expected["num_images"] == 21
    assert dataset.num_classes == expected["num_classes"]
    labels = [dataset[index][1] for index in range(len(dataset))]
    assert np.bincount(labels).tolist() == expected["images_per_class"]
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112) and isinstance(label, int)
    mean_rgb = image.double().mean(dim=(1, 2)).tolist()
    assert np.allclose(mean_rgb, expected["records"]["1"]["decoded_mean_rgb"], atol=1.0)


def test_file_without_header_uses_every_key_and_first_label_value():
    dataset = RecordDataset(FIXTURES / "plain")
    assert not dataset.has_header
    assert dataset.image_keys.tolist() == EXPECTED["plain"]["keys_in_idx_order"]
    labels = {int(key): dataset[index][1] for index, key in enumerate(dataset.image_keys)}
    assert labels == {0: 0, 5: 1, 7: 2, 100: 0, 101: 1}  # key 7 has the label vector [2, .25, .75]
    assert dataset.num_classes == 3  # no property: counted from the labels


def test_transform_is_applied_to_the_uint8_image():
    dataset = RecordDataset(FIXTURES / "ms1m_style", transform=lambda image: image.float() / 255)
    image, _ = dataset[3]
    assert image.dtype == torch.float32 and float(image.max()) <= 1.0


def test_property_disagreeing_with_header_is_an_error(tmp_path):
    shutil.copytree(FIXTURES / "ms1m_style", tmp_path / "data")
    (tmp_path / "data" / "property").write_text("7,112,112\n")
    with pytest.raises(UserError, match=r"property' says 7 classes but the header record .* lists 6"):
        RecordDataset(tmp_path / "data")


def test_missing_data_directory_names_config_rec(tmp_path):
    with pytest.raises(UserError, match=r"'.*nowhere' does not exist; set config.rec"):
        RecordDataset(tmp_path / "nowhere")


def test_truncated_rec_fails_at_construction(tmp_path):
    shutil.copytree(FIXTURES / "ms1m_style", tmp_path / "data")
    rec = tmp_path / "data" / "train.rec"
    rec.write_bytes(rec.read_bytes()[:30000])
    with pytest.raises(UserError, match=r"places key \d+ at byte \d+ but .*train.rec' holds only 30000 bytes"):
        RecordDataset(tmp_path / "data")


def test_label_outside_num_classes_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(png_bytes(random_face(rng)), 0.0), (png_bytes(random_face(rng)), 3.0)]
    write_rec(tmp_path / "data", samples, header=False, prop="2,112,112\n")
    dataset = RecordDataset(tmp_path / "data")
    assert dataset[0][1] == 0
    with pytest.raises(DataError, match=r"record key 2 .* has label 3, outside \[0, 2\)"):
        dataset[1]


def test_image_of_wrong_size_is_an_error_with_alignment_hint(tmp_path):
    rng = np.random.default_rng(0)
    small, right = png_bytes(random_face(rng, size=96)), png_bytes(random_face(rng))
    write_rec(tmp_path / "first", [(small, 0.0), (right, 0.0)])
    with pytest.raises(UserError, match=r"key 1 .* is 96x96, not 112x112; training needs aligned 112x112 faces"):
        RecordDataset(tmp_path / "first")  # the first record is checked when the dataset opens
    write_rec(tmp_path / "later", [(right, 0.0), (small, 0.0)])
    with pytest.raises(DataError, match=r"key 2 .* is 96x96, not 112x112; training needs aligned 112x112 faces"):
        RecordDataset(tmp_path / "later")[1]


def test_first_record_must_match_the_property_file(tmp_path):
    write_rec(tmp_path / "data", [(png_bytes(random_face(np.random.default_rng(0), size=128)), 0.0)],
              prop="1,112,112")
    with pytest.raises(UserError, match=r"key 1 .* is 128x128, not 112x112"):
        RecordDataset(tmp_path / "data")


def test_a_consistent_rec_of_another_size_stops_before_training(tmp_path):
    write_rec(tmp_path / "data", [(png_bytes(random_face(np.random.default_rng(0), size=128)), 0.0)],
              prop="1,128,128")
    assert RecordDataset(tmp_path / "data").image_size == (128, 128)  # consistent data, wrong for the network
    with pytest.raises(UserError, match=r"are 128x128 but the network takes 112x112; training needs aligned"):
        build_dataset(base_config(rec=str(tmp_path / "data")))


def test_synthetic_images_of_another_size_are_refused():
    check_input_size(SyntheticDataset(4, 2), "synthetic")
    with pytest.raises(UserError, match=r"'synthetic' are 64x64 but the network takes 112x112"):
        check_input_size(SyntheticDataset(4, 2, size=64), "synthetic")


def corrupt_dataset(tmp_path: Path, num_good: int, bad_positions: set[int], fraction: float) -> RecordDataset:
    rng = np.random.default_rng(1)
    samples = [(b"definitely not an image" if index in bad_positions else png_bytes(random_face(rng)),
                float(index % 2)) for index in range(num_good + len(bad_positions))]
    write_rec(tmp_path / "data", samples)
    return RecordDataset(tmp_path / "data", max_corrupt_fraction=fraction)


def test_corrupt_record_is_skipped_with_warning_and_replaced_by_the_next(tmp_path, caplog):
    dataset = corrupt_dataset(tmp_path, num_good=9, bad_positions={4}, fraction=0.1)
    with caplog.at_level(logging.WARNING, logger="dataset"):
        image, label = dataset[4]
    assert "skipping record key 5 of" in caplog.text  # position 4 is key 5
    expected_image, expected_label = dataset[5]
    assert torch.equal(image, expected_image) and label == expected_label
    assert dataset.corrupt.bad_names == {f"record key 5 of '{tmp_path / 'data' / 'train.rec'}'"}
    dataset[4]  # the same record again is not counted twice
    assert len(dataset.corrupt.bad_names) == 1


def test_too_many_corrupt_records_stop_with_a_clear_message(tmp_path):
    dataset = corrupt_dataset(tmp_path, num_good=8, bad_positions={1, 5}, fraction=0.1)  # budget: 1 of 10
    dataset[1]
    with pytest.raises(DataError, match=r"2 images failed to decode .*more than max_corrupt_fraction=0.1"):
        dataset[5]


def test_corrupt_limit_raised_in_a_worker_reaches_the_trainer_as_one_sentence(tmp_path):
    dataset = corrupt_dataset(tmp_path, num_good=3, bad_positions={0}, fraction=0.0)
    loader = build_loader(dataset, batch_size=2, num_workers=1, shuffle=False)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    message = str(caught.value)
    loader._iterator._shutdown_workers()  # now, rather than in a later test's garbage collection
    assert message.startswith("1 images failed to decode (last: record key 1") and "Traceback" not in message


def test_encoded_mode_returns_the_payload_bytes():
    dataset = RecordDataset(FIXTURES / "ms1m_style", decode=False)
    encoded, label, name = dataset[0]
    _, payload = unpack(dataset.reader.read(1))
    assert encoded.dtype == torch.uint8 and bytes(encoded.tolist()) == payload and label == 0
    assert "record key 1" in name
    batch = collate_encoded([dataset[0], dataset[5]])
    assert len(batch[0]) == 2 and batch[1].tolist() == [0, 1]


# ---- config counts ----

def test_counts_from_data_fill_zero_and_reject_mismatch():
    dataset = RecordDataset(FIXTURES / "ms1m_style")
    config = EasyDict(num_classes=0, num_image=0, rec=str(FIXTURES / "ms1m_style"), dataset="recordio")
    resolved = resolve_data_counts(config, dataset)
    assert (resolved.num_classes, resolved.num_image) == (6, 21) and config.num_classes == 0
    assert resolve_data_counts(EasyDict(config, num_classes=6, num_image=21), dataset).num_image == 21
    with pytest.raises(UserError, match=r"config.num_classes is 85742 but the data in .* holds 6"):
        resolve_data_counts(EasyDict(config, num_classes=85742), dataset)
    with pytest.raises(UserError, match=r"config.num_image is 20 but the data in .* holds 21"):
        resolve_data_counts(EasyDict(config, num_image=20), dataset)


def base_config(**overrides) -> EasyDict:
    config = EasyDict(dataset="recordio", rec="", num_classes=0, num_image=0, gpu_decode=False,
                      max_corrupt_fraction=0.001, index_cache="")
    config.update(overrides)
    return config


def test_build_dataset_picks_the_configured_kind(tmp_path):
    write_folder(tmp_path / "faces", [2, 1])
    assert isinstance(build_dataset(base_config(rec=str(FIXTURES / "plain"))), RecordDataset)
    assert isinstance(build_dataset(base_config(dataset="folder", rec=str(tmp_path / "faces"))),
                      ImageFolderDataset)
    synthetic = build_dataset(base_config(dataset="synthetic", num_classes=4, num_image=10))
    assert isinstance(synthetic, SyntheticDataset) and len(synthetic) == 10
    with pytest.raises(UserError, match="config key 'rec' is not set"):
        build_dataset(base_config())
    with pytest.raises(UserError, match="synthetic dataset needs num_image >= 1"):
        build_dataset(base_config(dataset="synthetic"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_gpu_decode_without_cuda_is_a_clear_error():
    with pytest.raises(UserError, match="gpu_decode is True but CUDA is not available"):
        build_dataset(base_config(rec=str(FIXTURES / "plain"), gpu_decode=True))
    with pytest.raises(UserError, match="gpu_decode=True needs a CUDA device"):
        GpuJpegDecoder("cpu", num_images=10, max_corrupt_fraction=0.0)


# ---- folders and synthetic data ----

def test_image_folder_labels_follow_sorted_names_and_pixels_are_exact(tmp_path, caplog):
    written = write_folder(tmp_path / "faces", [2, 3, 1])
    (tmp_path / "faces" / "id_1_empty").mkdir()
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path / "faces")
    assert "hold no images and stay classes without images: 'id_1_empty'" in caplog.text
    assert dataset.classes == ["id_0", "id_1", "id_1_empty", "id_2"] and dataset.num_classes == 4
    assert len(dataset) == 6
    for index in range(len(dataset)):
        image, label = dataset[index]
        relative = dataset.paths[index].decode()
        assert label == dataset.classes.index(relative.split("/")[0])
        assert torch.equal(image, torch.from_numpy(written[relative]).permute(2, 0, 1))
    assert sorted(set(dataset.labels.tolist())) == [0, 1, 3]  # the empty identity keeps its label, 2


def test_integer_folder_names_are_ordered_numerically_and_renumbering_is_reported(tmp_path, caplog):
    for name in ("2", "10", "0"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "faces" / name / "a.png"), np.zeros((112, 112, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        classes, samples = scan_image_folder(tmp_path / "faces")
    assert classes == ["0", "2", "10"] and [label for _, label in samples] == [0, 1, 2]
    assert "so 2 folders get another label (first: '2' -> 1)" in caplog.text


def test_image_folder_of_wrong_size_tells_how_to_fix(tmp_path):
    write_folder(tmp_path / "faces", [1], size=128)
    with pytest.raises(UserError, match=r"is 128x128, not 112x112; training needs aligned 112x112 faces: align"):
        ImageFolderDataset(tmp_path / "faces")


def test_image_folder_without_identity_folders_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "a.png"), np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(UserError, match="holds no identity sub-folders with images"):
        ImageFolderDataset(tmp_path / "flat")


def test_synthetic_dataset_is_deterministic():
    first, second = SyntheticDataset(20, 3, seed=5), SyntheticDataset(20, 3, seed=5)
    assert all(torch.equal(first[i][0], second[i][0]) for i in (0, 7, 19))
    assert [first[i][1] for i in range(5)] == [0, 1, 2, 0, 1]
    assert not torch.equal(first[0][0], first[1][0])
    assert not torch.equal(first[0][0], SyntheticDataset(20, 3, seed=6)[0][0])


# ---- sampler ----

@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_samples", [12, 13, 3])
def test_shards_are_disjoint_and_complete(world_size, num_samples):
    shards = [DistributedResumableSampler(num_samples, rank, world_size, seed=7).indices().tolist()
              for rank in range(world_size)]
    taken = [index for shard in shards for index in shard]
    assert len({len(shard) for shard in shards}) == 1  # every rank runs the same number of steps
    assert len(taken) == len(set(taken)) == num_samples - num_samples % world_size
    padded = [DistributedResumableSampler(num_samples, rank, world_size, seed=7, drop_last=False).indices().tolist()
              for rank in range(world_size)]
    assert len({len(shard) for shard in padded}) == 1
    assert set().union(*padded) == set(range(num_samples))


def test_epochs_reshuffle_from_the_seed():
    sampler = DistributedResumableSampler(50, seed=3)
    epoch0 = sampler.indices().tolist()
    sampler.set_epoch(1)
    epoch1 = sampler.indices().tolist()
    assert sorted(epoch0) == sorted(epoch1) == list(range(50)) and epoch0 != epoch1
    again = DistributedResumableSampler(50, seed=3)
    again.set_epoch(1)
    assert again.indices().tolist() == epoch1
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(3 + 1)).tolist()
    assert epoch1 == expected


@pytest.mark.parametrize("world_size", [1, 3])
def test_resuming_mid_epoch_continues_the_same_order(world_size):
    for rank in range(world_size):
        full = DistributedResumableSampler(40, rank, world_size, seed=11)
        full.set_epoch(2)
        order = full.indices().tolist()
        resumed = DistributedResumableSampler(40, rank, world_size, seed=11)
        resumed.set_epoch(2, 5 * world_size)
        assert resumed.indices().tolist() == order[5:] and len(resumed) == len(order) - 5
        resumed.set_epoch(2, 7 * world_size)  # a second interruption in the same epoch
        assert resumed.indices().tolist() == order[7:]


def test_resuming_with_another_world_size_sees_every_remaining_sample_once():
    """4 ranks took 3 samples each: 2 ranks continue after the first 12 images of the epoch."""
    old = [DistributedResumableSampler(48, rank, 4, seed=1) for rank in range(4)]
    consumed = {index for sampler in old for index in sampler.indices().tolist()[:3]}
    new = [DistributedResumableSampler(48, rank, 2, seed=1) for rank in range(2)]
    for sampler in new:
        sampler.set_epoch(0, 12)
    remaining = [index for sampler in new for index in sampler.indices().tolist()]
    assert len(remaining) == len(set(remaining)) == 48 - 12
    assert set(remaining) | consumed == set(range(48))


def _forward_passes(num_samples: int, world_size: int, micro_batches: int, batch_size: int, start: int = 0):
    """{step: [the sorted images of each forward pass]} of every rank's sampler, one epoch."""
    passes = {}
    for rank in range(world_size):
        sampler = DistributedResumableSampler(num_samples, rank, world_size, seed=5, batch_size=batch_size,
                                              micro_batches=micro_batches)
        sampler.set_epoch(3, start)
        order = torch.from_numpy(np.stack(list(sampler))).view(-1, micro_batches, batch_size)  # [steps, M, b]
        for step, micro in enumerate(order):
            passes.setdefault(step, []).extend(sorted(batch.tolist()) for batch in micro)
    return {step: sorted(groups) for step, groups in passes.items()}


@pytest.mark.parametrize("start", [0, 24])
def test_the_same_images_share_a_forward_pass_whatever_the_ranks_by_micro_batches_split(start):
    """Regression (issue 28): 1 process with 2 micro-batches put other images together than 2 ranks did,
    so BatchNorm saw other batches after a resume on fewer GPUs."""
    reference = _forward_passes(100, 4, 1, 6, start)  # 4 ranks x 1 micro-batch of 6: global batch 24
    assert len(reference) == (100 - start) // 24
    for world_size, micro_batches in [(2, 2), (1, 4)]:
        assert _forward_passes(100, world_size, micro_batches, 6, start) == reference
    taken = [image for groups in reference.values() for group in groups for image in group]
    permutation = torch.randperm(100, generator=torch.Generator().manual_seed(5 + 3)).tolist()
    assert sorted(taken) == sorted(permutation[start:start + len(taken)])  # a prefix of the rest, once each


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_the_tail_comes_in_batches_of_batch_size_and_len_counts_the_batches(rank):
    """13 images, 3 ranks x 2 micro-batches of 2 (global batch 12): one whole step, then the tail (1 image)
    padded to 3 and shared: a last batch of 1 per rank; with 2 images per micro-batch and 7 images left
    after a resume at 6, rank r takes tail[r::3] of 7 padded to 9: one batch of 2 and one of 1."""
    sampler = DistributedResumableSampler(13, rank, 3, seed=4, drop_last=False, batch_size=2, micro_batches=2)
    shapes = [len(batch) for batch in sampler]
    assert shapes == [2, 2, 1] and len(sampler) == 3
    sampler.set_epoch(0, 6)  # 7 left: no whole step, a padded tail of 9, 3 per rank
    assert [len(batch) for batch in sampler] == [2, 1] and len(sampler) == 2
    loader = build_loader(WorkerRandom(), batch_size=2, rank=rank, world_size=3, seed=4, num_workers=0,
                          drop_last=False, micro_batches=2)
    assert len(loader) == len(list(loader)) == 3  # 16 images: one step of 12, a tail of 4 -> 2 per rank


def test_the_permutation_is_int32_and_the_order_of_earlier_versions():
    """Checkpoints of earlier versions resume into the same order: torch.randperm(N) as int64, seed + epoch."""
    sampler = DistributedResumableSampler(1000, seed=2048)
    sampler.set_epoch(4)
    permutation = sampler.permutation()
    assert permutation.dtype == torch.int32
    expected = torch.randperm(1000, generator=torch.Generator().manual_seed(2048 + 4))
    assert torch.equal(permutation.long(), expected) and sampler.indices().tolist() == expected.tolist()


# ---- loader ----

class WorkerRandom(torch.utils.data.Dataset):
    """Returns the index and a draw from the worker's torch RNG, to check worker seeding."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return index, torch.rand(()).item()


def test_loader_follows_the_sampler_and_seeds_workers_per_rank():
    def draws(rank):
        loader = build_loader(WorkerRandom(), batch_size=4, rank=rank, world_size=2, seed=9, num_workers=2)
        return [(indices.tolist(), values.tolist()) for indices, values in loader]

    rank0, rank0_again, rank1 = draws(0), draws(0), draws(1)
    assert rank0 == rank0_again  # same seed, rank and worker -> same random numbers
    assert [values for _, values in rank0] != [values for _, values in rank1]
    expected = DistributedResumableSampler(16, 0, 2, seed=9).indices().tolist()
    assert [index for indices, _ in rank0 for index in indices] == expected
    assert len(rank0) == 2 and all(len(indices) == 4 for indices, _ in rank0)


def test_loader_over_records_gives_uint8_batches_and_drops_the_last_partial_batch():
    dataset = RecordDataset(FIXTURES / "ms1m_style")
    loader = build_loader(dataset, batch_size=4, num_workers=1, seed=0)
    batches = list(loader)
    assert len(batches) == 5 == len(loader)
    images, labels = batches[0]
    assert images.shape == (4, 3, 112, 112) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert not loader.pin_memory  # pinned only for CUDA devices
