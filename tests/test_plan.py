"""tools.plan: its figures against what this machine measures (Partial FC's peak, the index's memory, a
saved checkpoint, the training loop's step count, the shard sizes of 3 gloo ranks), the does-not-fit line
and its advice, --check, --json and the CLI's one-line errors."""

import ctypes
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from backbones import VisionTransformer
from bench import bench_pfc_memory
from dataset import DistributedResumableSampler, RecordDataset
from losses import CombinedMarginLoss
from partial_fc import PartialFC
from tests.dist_utils import run_distributed
from tools import model_info, plan
from utils.config import load_config
from utils.opencv import cv2
from utils.recordio import IRHeader, encode_record, pack


def write_config(folder: Path, **values) -> Path:
    path = folder / "config.py"
    path.write_text("from easydict import EasyDict\nconfig = EasyDict(" +
                    ", ".join(f"{key}={value!r}" for key, value in values.items()) + ")\n")
    return path


def run_plan(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m tools.plan ARGV`, in this process."""
    code = plan.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _mmap_every_large_block() -> None:
    """Serve every allocation of 128 KiB or more by mmap, returned on free (glibc otherwise raises the
    threshold as blocks are freed, up to 32 MiB, and keeps freed heap blocks resident), so that the peak
    RSS follows the live tensors as CUDA's max_memory_allocated does."""
    ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _loss_peak(rank, world_size, batch, classes, sample_rate):
    _mmap_every_large_block()
    return bench_pfc_memory.probe("fused (ours)", classes, batch, 512, sample_rate)["peak_growth_bytes"]


def measured_loss_peak(batch: int, classes: int, sample_rate: float) -> int:
    """Peak RSS growth of one Partial FC forward + backward in a new process (bench/bench_pfc_memory.py's
    probe: VmHWM reset after building, warm-up step before), forked from dist_utils' fork server."""
    return run_distributed(_loss_peak, 1, batch, classes, sample_rate)[0]


@pytest.mark.parametrize(("batch", "classes", "sample_rate"), [(1024, 30000, 1.0), (2048, 16000, 0.3)])
def test_partial_fc_peak_is_within_6_to_15_percent_of_the_measured_cpu_peak(batch, classes, sample_rate):
    """Peak RSS growth follows the live tensors at these sizes (buffers this large are mmap'd and returned
    on free); the first shape is [S, D]-heavy (the backward's centre tensors matter), the second sampled."""
    num_sampled = math.ceil(sample_rate * classes)
    predicted = plan.partial_fc_peak_bytes(batch, num_sampled, classes, 512, "fp32")
    measured = measured_loss_peak(batch, classes, sample_rate)
    assert 0.94 * measured <= predicted <= 1.15 * measured, (predicted, measured)


def _shard_sizes(rank, world_size, num_classes, sample_rate):
    pfc = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 8, num_classes, sample_rate)
    return {"rows": pfc.num_local, "sampled": pfc.num_sample}


def test_centre_shard_sizes_are_those_of_the_largest_of_three_gloo_ranks(tmp_path):
    num_classes, sample_rate = 1001, 0.3
    shards = run_distributed(_shard_sizes, 3, num_classes, sample_rate)
    config = write_config(tmp_path, network="vit_nano", num_classes=num_classes, num_image=3000, batch_size=4,
                          sample_rate=sample_rate, embedding_size=8)
    gpu = plan.make_plan(load_config(config), plan.Cluster(3, 3, 80.0, 1.0))["per_gpu"]
    assert gpu["class_rows"] == max(shard["rows"] for shard in shards) == 334
    assert gpu["sampled_rows"] == max(shard["sampled"] for shard in shards)
    assert gpu["rows"]["class_centres"] == 4 * 334 * 8


def test_checkpoint_sizes_and_steps_match_a_tiny_training_run(tmp_path):
    """One optimizer step of vit_nano on synthetic data, AdamW, 3000 classes: the saved common.pt and
    rank file within 2 % of the plan, and the loop's own step count equal to the plan's."""
    config = write_config(tmp_path, network="vit_nano", embedding_size=32, dataset="synthetic", num_classes=3000,
                          num_image=100, batch_size=8, num_epoch=3, precision="fp32", num_workers=0,
                          tensorboard=False, verbose=10_000, sample_rate=0.5, output=str(tmp_path / "out"))
    torch.set_num_threads(1)
    assert train.main([str(config), "--max-steps", "1"]) == 0
    folder = next((tmp_path / "out" / "checkpoints").iterdir())
    predicted = plan.make_plan(load_config(config), plan.Cluster(1, 1, 80.0, 1.0))
    checkpoint = predicted["checkpoint"]
    assert checkpoint["common_pt"] == pytest.approx((folder / "common.pt").stat().st_size, rel=0.02)
    assert checkpoint["rank_file"] == pytest.approx((folder / "rank_00000.pt").stat().st_size, rel=0.02)
    log = (tmp_path / "out" / "training.log").read_text()
    schedule = predicted["schedule"]
    assert f"{schedule['total_steps']} steps of 8 images ({schedule['steps_per_epoch']} per epoch" in log
    assert (schedule["steps_per_epoch"], schedule["total_steps"]) == (12, 36)


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of `values` [n] as ASCII [n, width] (read_index parses them as integers)."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)


def _write_record_set(root: Path, num_images: int, num_classes: int) -> None:
    """insightface's layout (header record 0, images 1..n, identity records after) where every index line
    but the header's points at one image record: the index has its real length, the .rec one image."""
    root.mkdir()
    _, jpeg = cv2.imencode(".jpg", np.zeros((112, 112, 3), np.uint8))
    header = encode_record(pack(IRHeader(0, [num_images + 1, num_images + 1 + num_classes], 0, 0)))
    image = encode_record(pack(IRHeader(0, 0.0, 1, 0), jpeg.tobytes()))
    (root / "train.rec").write_bytes(header + image)
    num_lines = num_images + num_classes + 1
    offsets = np.full(num_lines, len(header), dtype=np.int64)
    offsets[0] = 0
    tab, newline = (np.full((num_lines, 1), ord(c), np.uint8) for c in "\t\n")
    lines = np.hstack([_digits(np.arange(num_lines), 8), tab, _digits(offsets, 4), newline])  # [lines, 14]
    (root / "train.idx").write_bytes(lines.tobytes())
    (root / "property").write_text(f"{num_classes},112,112\n")


def _kib(field: str) -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field + ":"))


def _index_memory(rank, world_size, root, index_cache):
    """(peak, held, held privately) RSS growth of building a RecordDataset and one epoch's sampler order, in
    bytes (Linux); "privately": anonymous memory, not the pages of a mapped index cache."""
    _mmap_every_large_block()
    DistributedResumableSampler(2).permutation()  # the compiled shuffle's one-time load (Numba) is not data
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before, anonymous_before = _kib("VmRSS"), _kib("RssAnon")
    data = RecordDataset(root, index_cache=index_cache)
    order = DistributedResumableSampler(len(data)).permutation()  # noqa: F841 - held while measuring
    return ((_kib("VmHWM") - before) * 1024, (_kib("VmRSS") - before) * 1024,
            (_kib("RssAnon") - anonymous_before) * 1024)


@pytest.mark.parametrize("index_cache", ["off", ""])
def test_dataset_index_memory_matches_a_record_dataset_of_two_million_lines(tmp_path, monkeypatch, index_cache):
    """RecordDataset built in a new process: the start-up peak and the memory still held afterwards (its
    arrays and one epoch's permutation) within 15 % of the plan's per-process figures, parsed in every
    process (index_cache "off") or once into the cache (the default), after which a second process keeps
    only its permutation privately. This index's lines are shorter than a real one's (4-digit offsets, not
    13): the plan is given their length."""
    num_images, num_classes = 2_000_000, 20_000
    _write_record_set(tmp_path / "rec", num_images, num_classes)
    line_bytes = (tmp_path / "rec" / "train.idx").stat().st_size / (num_images + num_classes + 1)
    monkeypatch.setattr(plan, "INDEX_LINE_BYTES", line_bytes)
    peak, held, _ = run_distributed(_index_memory, 1, str(tmp_path / "rec"), index_cache)[0]
    config = write_config(tmp_path, network="vit_nano", num_classes=num_classes, num_image=num_images, batch_size=8,
                          index_cache=index_cache)
    figures = plan.make_plan(load_config(config), plan.Cluster(8, 8, 80.0, 1.0))["per_node"]
    predicted = figures["per_process"]
    assert figures["index_cached"] == (index_cache != "off")
    assert predicted["dataset_index_start_up"] == pytest.approx(peak, rel=0.15)
    if index_cache == "off":
        assert predicted["dataset_index"] == pytest.approx(held, rel=0.15)
        assert figures["rows"]["dataset_index"] == 8 * predicted["dataset_index"]
    else:
        private = run_distributed(_index_memory, 1, str(tmp_path / "rec"), index_cache)[0][2]
        assert predicted["dataset_index"] == pytest.approx(private, rel=0.15)
        cache_bytes = (tmp_path / "rec" / "train.idx.cache").stat().st_size
        assert figures["rows"]["dataset_index"] - 8 * predicted["dataset_index"] == pytest.approx(cache_bytes, rel=0.02)


def test_checkpointing_keeps_each_block_input_and_recomputes_one_block():
    """A ViT of 3 blocks: checkpointing keeps the [tokens, width] fp32 input of each block (per image)."""
    with torch.device("meta"):
        model = VisionTransformer(num_features=8, embed_dim=16, depth=3, num_heads=2)
    profile = model_info.activation_profile_per_image(model.to_empty(device="cpu"), "fp32")
    assert profile.unit_inputs == 3 * 144 * 16 * 4
    assert profile.in_units == pytest.approx(3 * profile.largest_unit)
    assert profile.checkpointed == profile.saved - 2 * profile.largest_unit + profile.unit_inputs


@pytest.fixture()
def big_head_config(tmp_path) -> Path:
    """vit_nano with 4M classes at batch 256: the Partial FC loss and the centres dominate."""
    return write_config(tmp_path, network="vit_nano", num_classes=4_000_000, num_image=10_000_000,
                        batch_size=256, sample_rate=1.0, output=str(tmp_path / "out"))


def test_a_setting_that_does_not_fit_says_so_in_one_line_with_changes_that_do_fit(big_head_config, capsys):
    """11.7 GiB on 8 GPUs of 10 GiB: each change the line names fits, and is the least change that does."""
    code, out, err = run_plan(capsys, big_head_config, "--gpus", 8, "--gpu-memory", 10)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("does not fit: 11.7 GiB per GPU of 9.0 usable"), last
    advised = re.search(r"sample_rate=([\d.]+); batch_size=(\d+) with global_batch_size=2048 \((\d+) micro-batches "
                        r"per step\); (\d+) GPUs\.$", last)
    assert advised, last
    rate, batch, micro_batches, gpus = float(advised[1]), int(advised[2]), int(advised[3]), int(advised[4])
    cfg = load_config(big_head_config)
    cluster = plan.Cluster(8, 8, 10.0, 1.0)

    def fits(cluster=cluster, **changes):
        return plan.make_plan(type(cfg)({**cfg, **changes}), cluster)["per_gpu"]["fits"]

    assert fits(sample_rate=rate) and not fits(sample_rate=rate + 0.05)
    assert fits(batch_size=batch, global_batch_size=2048) and batch * micro_batches * 8 == 2048
    assert not fits(batch_size=2 * batch, global_batch_size=2048)
    assert fits(cluster._replace(gpus=gpus)) and not fits(cluster._replace(gpus=gpus - 8))
    assert run_plan(capsys, big_head_config, "--gpus", 8, "--gpu-memory", 10, "--check")[0] == 1


def test_a_setting_that_fits_exits_0_with_check_and_json_holds_every_figure(big_head_config, capsys):
    code, out, err = run_plan(capsys, big_head_config, "--gpus", 64, "--gpu-memory", 80, "--check", "--json")
    assert code == 0, err
    figures = json.loads(out)
    gpu = figures["per_gpu"]
    assert gpu["fits"] and figures["advice"] is None
    assert gpu["total"] == pytest.approx(sum(gpu["rows"].values()))
    assert gpu["class_rows"] == math.ceil(4_000_000 / 64)
    assert figures["checkpoint"]["write_seconds"] == pytest.approx(figures["checkpoint"]["total"] / 1e9)
    text = run_plan(capsys, big_head_config, "--gpus", 64, "--storage-gbps", 2)[1]
    assert "storage at 2 GB/s" in text and text.strip().splitlines()[-1].startswith("fits: ")


def test_host_memory_is_checked_when_given_and_names_the_phase(big_head_config, capsys):
    """4M classes on 64 GPUs, 10M images: the resume (0.7 GiB of shards per process beside the index and
    common.pt, 6.3 GiB a node) is the node's peak, over 90 % of 6 GiB."""
    code, out, _ = run_plan(capsys, big_head_config, "--gpus", 64, "--host-memory", 6, "--check")
    figures = plan.make_plan(load_config(big_head_config), plan.Cluster(64, 8, 80.0, 1.0, 6.0))["per_node"]
    assert figures["peak"] > 0.9 * 6 * 2**30 and max(figures["phases"], key=figures["phases"].get) == "resume"
    assert code == 1 and out.strip().splitlines()[-1].startswith("host memory does not fit: "), out
    assert "at resume" in out.strip().splitlines()[-1]
    assert run_plan(capsys, big_head_config, "--gpus", 64, "--host-memory", 64, "--check")[0] == 0
    assert "host memory does not fit" not in run_plan(capsys, big_head_config, "--gpus", 64)[1]


def test_the_advised_sample_rate_steps_down_from_the_configured_one(big_head_config, monkeypatch):
    """0.29 x 100 is 28.999...: the first rate tried was 0.23, not 0.24."""
    cfg = type(load_config(big_head_config))({**load_config(big_head_config), "sample_rate": 0.29})
    cluster = plan.Cluster(8, 8, 10.0, 1.0)
    per_gpu = plan.make_plan(cfg, cluster, advise=False)["per_gpu"]
    monkeypatch.setattr(plan, "_fits", lambda changed, cluster: changed.sample_rate < 0.29)
    assert "sample_rate=0.24." in plan.advice(cfg, cluster, per_gpu)


@pytest.mark.parametrize(("argv", "words"), [
    (["missing.py", "--gpus", "8"], "missing.py"),
    (["{config}", "--gpus", "12", "--gpus-per-node", "8"], "not a multiple of --gpus-per-node 8"),
    (["{config}", "--gpus", "8", "--gpu-memory", "0"], "must be positive"),
    (["{config}", "--gpus", "8", "--host-memory", "0"], "--host-memory 0.0 must be positive"),
    (["{config}", "--gpus", "8", "--set", "num_image=0"], "--set num_image=N"),
    (["{config}", "--gpus", "8", "--set", "global_batch_size=1000"], "global_batch_size 1000"),
])
def test_user_mistakes_exit_2_with_one_line(big_head_config, capsys, argv, words):
    code, _, err = run_plan(capsys, *[arg.format(config=big_head_config) for arg in argv])
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert words in err, err


def _head_loss_peak(rank, world_size, batch, classes, loss):
    _mmap_every_large_block()
    return bench_pfc_memory.probe("fused (ours)", classes, batch, 512, 1.0, loss)["peak_growth_bytes"]


def test_partial_fc_peak_counts_the_configured_heads_float_slope(big_head_config, capsys):
    """CurricularFace keeps a float slope [N, S] beside the buffer (11.4 B an element measured here, 7.4
    for ArcFace): its peak is within 6 to 15 % of the measured one, and a config with loss="curricularface"
    is planned with it (the plan counted the combined margin's 4 B an element less before)."""
    batch, classes = 2048, 16000
    predicted = plan.partial_fc_peak_bytes(batch, classes, classes, 512, "fp32", "curricularface")
    measured = run_distributed(_head_loss_peak, 1, batch, classes, "curricularface")[0]
    assert 0.94 * measured <= predicted <= 1.15 * measured, (predicted, measured)
    cfg = load_config(big_head_config)
    cluster = plan.Cluster(64, 8, 80.0, 1.0)
    peaks = {loss: plan.make_plan(type(cfg)({**cfg, "loss": loss}), cluster)["per_gpu"]
             for loss in ("combined", "curricularface")}
    elements = peaks["combined"]["logit_elements"]
    assert peaks["curricularface"]["rows"]["partial_fc_loss_peak"] == pytest.approx(
        peaks["combined"]["rows"]["partial_fc_loss_peak"] + 4 * elements)
    assert "curricularface" in run_plan(capsys, big_head_config, "--gpus", 64, "--set", "loss=curricularface")[1]
