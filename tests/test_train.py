"""train.py: learning, exact gradient accumulation, distributed equivalence, exact resume, faults, errors."""

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

import dataset
import device_input
import train
from backbones import get_model, load_backbone
from tests.dist_utils import run_distributed
from tools import pack_rec
from utils import checkpoint, distributed
from utils.config import derive, load_config
from utils.opencv import cv2
from utils.optim import lr_at

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES, IMAGES_PER_CLASS = 8, 8
# Bitwise comparisons need a fixed thread count: BLAS libraries may otherwise pick fewer threads under
# load and sum in another order.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory) -> Path:
    """Identity folders whose images share a class pattern under per-image noise: learnable in a few steps."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for label in range(NUM_CLASSES):
        pattern = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (112, 112),
                             interpolation=cv2.INTER_NEAREST).astype(np.int16)
        folder = root / f"id_{label:02d}"
        folder.mkdir()
        for index in range(IMAGES_PER_CLASS):
            noisy = np.clip(pattern + rng.integers(-40, 41, pattern.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{index}.png"), noisy)
    return root


def write_config(folder: Path, data: Path, **overrides) -> Path:
    values = dict(network="vit_nano", embedding_size=32, dataset="folder", rec=str(data), batch_size=8,
                  num_epoch=2, precision="fp32", num_workers=0, frequent=1, verbose=10_000, tensorboard=False,
                  lr=1e-3, output=str(folder / "out"), dpap_prob=0.5, sample_rate=0.5, seed=7)
    values.update(overrides)
    path = folder / "config.py"
    path.write_text("from easydict import EasyDict\nconfig = EasyDict(" +
                    ", ".join(f"{key}={value!r}" for key, value in values.items()) + ")\n")
    return path


def logged_losses(output: Path) -> list[float]:
    return [float(m) for m in re.findall(r"loss ([\d.]+)", (output / "training.log").read_text())]


def load_weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_training_reduces_the_loss_on_a_learnable_dataset(tmp_path, face_folder):
    config = write_config(tmp_path, face_folder, num_epoch=5, lr=2e-3, margin_list=(1.0, 0.0, 0.1),
                          margin_scale=16.0)
    assert train.main([str(config)]) == 0
    losses = logged_losses(tmp_path / "out")
    assert len(losses) == 5 * (NUM_CLASSES * IMAGES_PER_CLASS // 8)
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])
    assert (tmp_path / "out" / "model.pt").is_file() and (tmp_path / "out" / "config.json").is_file()
    # The run's log handlers are gone with it: a later log record in this process must not go to the run's
    # stderr (here pytest's capture, closed after this test) or to its closed training.log.
    assert not [h for h in logging.getLogger().handlers if getattr(h, "transface", False)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, face_folder) -> Path:
    """One complete run (DPAP, EHSM, sampled centres, flips all random) to compare resumed runs against."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert train.main([str(write_config(folder, face_folder, save_every=3))]) == 0
    return folder / "out"


def test_resume_gives_bitwise_the_same_weights_as_never_stopping(tmp_path, face_folder, uninterrupted):
    config = str(write_config(tmp_path, face_folder, save_every=3))
    assert train.main([config, "--max-steps", "5"]) == 0
    assert not (tmp_path / "out" / "model.pt").exists()
    assert train.main([config, "--resume", "auto"]) == 0
    assert_same_weights(load_weights(tmp_path / "out" / "model.pt"), load_weights(uninterrupted / "model.pt"))


def test_truncated_newest_checkpoint_falls_back_and_still_matches(tmp_path, face_folder, uninterrupted):
    config = str(write_config(tmp_path, face_folder, save_every=3))
    assert train.main([config, "--max-steps", "7"]) == 0
    newest = sorted((tmp_path / "out" / "checkpoints").iterdir())[-1]
    assert newest.name == "step_000000007"
    common = newest / "common.pt"
    common.write_bytes(common.read_bytes()[:1000])
    assert train.main([config, "--resume", "auto"]) == 0
    assert "incomplete or unreadable" in (tmp_path / "out" / "training.log").read_text()
    assert_same_weights(load_weights(tmp_path / "out" / "model.pt"), load_weights(uninterrupted / "model.pt"))


def checkpoint_weights(output: Path, step: int) -> dict:
    folder = output / "checkpoints" / f"step_{step:09d}"
    return {**load_weights(folder / "common.pt")["backbone"],
            "head.weight": load_weights(folder / "rank_00000.pt")["head"]["weight"]}


def test_sigterm_stops_with_a_checkpoint_and_the_resumed_run_matches(tmp_path, face_folder):
    """Regression: this test once passed without the SIGTERM path running (the run could finish first, and
    the stderr check accepted any run). 40 epochs are 320 steps: the signal arrives long before the end."""
    long_run = dict(save_every=3, num_epoch=40)
    config = str(write_config(tmp_path, face_folder, **long_run))
    process = subprocess.Popen([sys.executable, "train.py", config], cwd=REPO, env=ONE_THREAD, stderr=subprocess.PIPE,
                               text=True)
    first_checkpoint = tmp_path / "out" / "checkpoints" / "step_000000003"
    deadline = time.time() + 120
    while not first_checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be signalled"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    stopped = re.search(r"stopped at step (\d+) on request", stderr)
    assert stopped, stderr
    step = int(stopped.group(1))
    assert 3 <= step < 320
    assert (tmp_path / "out" / "checkpoints" / f"step_{step:09d}").is_dir()
    assert not (tmp_path / "out" / "model.pt").exists()

    assert train.main([config, "--resume", "auto", "--max-steps", str(step + 2)]) == 0
    reference = tmp_path / "reference"
    reference.mkdir()
    assert train.main([str(write_config(reference, face_folder, **long_run)), "--max-steps", str(step + 2)]) == 0
    assert_same_weights(checkpoint_weights(tmp_path / "out", step + 2), checkpoint_weights(reference / "out", step + 2))


def _frozen_batchnorm_run(cfg, ctx):
    """A Run whose BatchNorm layers use running statistics, so that the result of a step does not
    depend on how the global batch is split into micro-batches or ranks."""
    run = train.build_run(cfg, ctx)
    run.model.train()
    for module in run.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.eval()
    return run


def _step_config(**overrides) -> EasyDict:
    """SGD: its update is linear in the gradient, so float-level gradient differences stay float-level
    (Adam's first step divides by |g| and turns them into sign flips where g is near zero)."""
    path = REPO / "configs" / "base.py"
    values = dict(network="vit_nano", embedding_size=16, num_classes=10, num_image=64, batch_size=8,
                  precision="fp32", dpap=False, sample_rate=1.0, clip_grad_norm=0.05, lr=0.1, optimizer="sgd")
    cfg = load_config(path, [f"{k}={v!r}" for k, v in {**values, **overrides}.items()])
    return derive(cfg, world_size=1)


def _global_batches(num_steps: int, batch: int):
    generator = torch.Generator().manual_seed(3)
    return [(torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1,
             torch.randint(0, 10, (batch,), generator=generator)) for _ in range(num_steps)]


def _run_steps(cfg, ctx, batches, split: int, rank: int = 0, world_size: int = 1) -> dict:
    torch.manual_seed(0)
    run = _frozen_batchnorm_run(cfg, ctx)
    for images, labels in batches:
        per_rank = len(labels) // world_size
        images = images[rank * per_rank:(rank + 1) * per_rank]
        labels = labels[rank * per_rank:(rank + 1) * per_rank]
        micro = list(zip(images.chunk(split), labels.chunk(split)))
        assert train.train_step(run, micro) is not None
        run.step += 1
    return {"backbone": run.backbone.state_dict(), "head": run.head.weight.detach().clone()}


def test_gradient_accumulation_equals_one_large_batch():
    ctx = distributed.setup("cpu")
    batches = _global_batches(3, 16)
    whole = _run_steps(_step_config(batch_size=16), ctx, batches, split=1)
    accumulated = _run_steps(_step_config(batch_size=8, gradient_accumulation=2), ctx, batches, split=2)
    for key, value in whole["backbone"].items():
        torch.testing.assert_close(accumulated["backbone"][key], value, atol=2e-5, rtol=1e-4, msg=key)
    torch.testing.assert_close(accumulated["head"], whole["head"], atol=2e-5, rtol=1e-4)


def _distributed_steps(rank, world_size, batches):
    ctx = distributed.setup("cpu")
    ctx = distributed.DistContext(rank=rank, local_rank=rank, world_size=world_size, device=ctx.device)
    result = _run_steps(_step_config(batch_size=16 // world_size), ctx, batches, split=1, rank=rank,
                        world_size=world_size)
    return {"backbone": result["backbone"], "head": result["head"]}


def test_two_processes_equal_one_process_with_the_same_global_batch():
    batches = _global_batches(3, 16)
    single = _run_steps(_step_config(batch_size=16), distributed.setup("cpu"), batches, split=1)
    ranks = run_distributed(_distributed_steps, 2, batches)
    for key, value in single["backbone"].items():
        for result in ranks:
            torch.testing.assert_close(result["backbone"][key], value, atol=2e-5, rtol=1e-4, msg=key)
    torch.testing.assert_close(torch.cat([r["head"] for r in ranks]), single["head"], atol=2e-5, rtol=1e-4)


def test_non_finite_losses_skip_steps_then_stop_with_a_clear_error():
    cfg = _step_config(max_nonfinite_steps=2)
    run = _frozen_batchnorm_run(cfg, distributed.setup("cpu"))
    before = {k: v.clone() for k, v in run.backbone.state_dict().items()}
    images = torch.full((8, 3, 112, 112), float("nan"))
    labels = torch.zeros(8, dtype=torch.int64)
    assert train.train_step(run, [(images, labels)]) is None
    assert_same_weights(run.backbone.state_dict(), before)
    with pytest.raises(train.TrainingDiverged, match="2 steps in a row"):
        train.train_step(run, [(images, labels)])


def test_config_and_data_mismatches_exit_with_a_clear_message(tmp_path, face_folder, capsys):
    assert train.main([str(write_config(tmp_path, face_folder, num_classes=9))]) == 2
    assert "num_classes is 9 but the data" in capsys.readouterr().err
    assert train.main([str(write_config(tmp_path, face_folder, precision="fp16"))]) == 2
    assert "fp16" in capsys.readouterr().err
    assert train.main([str(write_config(tmp_path, face_folder, rec=""))]) == 2
    assert "--set rec=" in capsys.readouterr().err
    (tmp_path / "out" / "checkpoints" / "step_000000001").mkdir(parents=True)
    assert train.main([str(write_config(tmp_path, face_folder))]) == 2
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "out" / "checkpoints")
    weights = tmp_path / "micro.pt"
    torch.save(get_model("vit_micro", 32).state_dict(), weights)
    assert train.main([str(write_config(tmp_path, face_folder)), "--init", str(weights)]) == 2
    assert "does not match network 'vit_nano'" in capsys.readouterr().err


def test_a_rec_of_128x128_images_stops_before_step_1_with_one_line(tmp_path, capsys):
    """Such a .rec once passed every check and died at step 1 with a 34-line traceback, exit 1."""
    for label in range(2):
        (tmp_path / "faces" / str(label)).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "faces" / str(label) / "a.png"), np.full((128, 128, 3), 60 * label, np.uint8))
    assert pack_rec.main([str(tmp_path / "faces"), str(tmp_path / "rec"), "--image-size", "128", "--workers", "1"]) == 0
    capsys.readouterr()
    config = write_config(tmp_path, tmp_path / "rec", dataset="recordio", batch_size=2)
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are 128x128 but the network takes 112x112" in err and "resize" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_init_starts_from_pretrained_weights(tmp_path, face_folder):
    torch.manual_seed(1)
    weights = tmp_path / "init.pt"
    pretrained = get_model("vit_nano", 32).state_dict()
    torch.save(pretrained, weights)
    config = str(write_config(tmp_path, face_folder, lr=1e-12))
    assert train.main([config, "--init", str(weights), "--max-steps", "1"]) == 0
    common = load_weights(next((tmp_path / "out" / "checkpoints").iterdir()) / "common.pt")
    torch.testing.assert_close(common["backbone"]["pos_embed"], pretrained["pos_embed"])


@pytest.mark.slow
def test_killed_worker_under_torchrun_restarts_and_matches_an_uninterrupted_run(tmp_path, face_folder):
    def launch(folder: Path) -> subprocess.Popen:
        folder.mkdir()
        config = write_config(folder, face_folder, save_every=2, num_epoch=3, resume=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
                   "--standalone", "train.py", str(config)]
        return subprocess.Popen(command, cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    clean = launch(tmp_path / "clean")
    output, _ = clean.communicate(timeout=600)
    assert clean.returncode == 0, output

    faulty = launch(tmp_path / "faulty")
    # Kill once step 2's checkpoint is complete (every part and its checksum): its folder appears before
    # that, and a kill in between rightly restarts from scratch, with no checkpoint to resume.
    manager = checkpoint.CheckpointManager(tmp_path / "faulty" / "out", 0, 2)
    step_2 = manager.root / "step_000000002"
    deadline = time.time() + 300
    while not (step_2.is_dir() and manager._complete(step_2)) and time.time() < deadline:
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", "-P", str(faulty.pid), "train.py"], capture_output=True,
                             text=True).stdout.split()
    assert workers, "no worker process found to kill"
    os.kill(int(workers[-1]), signal.SIGKILL)
    output, _ = faulty.communicate(timeout=600)
    assert faulty.returncode == 0, output
    assert "resuming from" in (tmp_path / "faulty" / "out" / "training.log").read_text()
    assert_same_weights(load_weights(tmp_path / "faulty" / "out" / "model.pt"),
                        load_weights(tmp_path / "clean" / "out" / "model.pt"))


def _resume_in_two_processes(rank, world_size, config):
    cfg = derive(load_config(config, ["num_classes=8", "num_image=64"]), world_size)
    ctx = distributed.setup("cpu")
    run = train.build_run(cfg, ctx)
    manager = train.CheckpointManager(cfg.output, ctx.rank, ctx.world_size)
    assert train.restore(run, manager)
    state = run.head_optimizer.state_dict()["state"][0]
    return {"step": run.step, "weight": run.head.weight.detach(), "exp_avg": state["exp_avg"]}


def test_resuming_on_another_world_size_reshards_the_class_centres(tmp_path, face_folder):
    config = write_config(tmp_path, face_folder, sample_rate=1.0)
    assert train.main([str(config), "--max-steps", "3"]) == 0
    saved = load_weights(tmp_path / "out" / "checkpoints" / "step_000000003" / "rank_00000.pt")
    ranks = run_distributed(_resume_in_two_processes, 2, str(config))
    assert [r["step"] for r in ranks] == [3, 3]
    assert [len(r["weight"]) for r in ranks] == [4, 4]
    assert torch.equal(torch.cat([r["weight"] for r in ranks]), saved["head"]["weight"])
    assert torch.equal(torch.cat([r["exp_avg"] for r in ranks]), saved["head_optimizer"]["state"][0]["exp_avg"])


def _scaler_after_overflow_on_rank_1(rank, world_size):
    ctx = distributed.DistContext(rank=rank, local_rank=rank, world_size=world_size, device=torch.device("cpu"))
    scaler = train._grad_scaler(EasyDict(precision="fp16"), ctx)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler.scale(param.sum()).backward()
    if rank == 1:
        param.grad[0] = float("inf")  # only this rank's (class-centre) gradients overflow
    scaler.step(optimizer)
    scaler.update()
    return {"scale": scaler.get_scale(), "param": param.detach().clone()}


def test_fp16_loss_scale_and_skipped_steps_agree_across_ranks():
    """Regression: per-rank GradScalers drifted apart when one rank's class-centre shard overflowed."""
    ranks = run_distributed(_scaler_after_overflow_on_rank_1, 2)
    assert ranks[0]["scale"] == ranks[1]["scale"] == 65536.0 / 2
    assert all(torch.equal(r["param"], torch.ones(3)) for r in ranks)  # both ranks skipped the step


def test_resuming_with_another_network_is_a_clear_error(tmp_path, face_folder, capsys):
    config = str(write_config(tmp_path, face_folder))
    assert train.main([config, "--max-steps", "1"]) == 0
    assert train.main([config, "--resume", "auto", "--set", "network=vit_micro"]) == 2
    assert "network 'vit_nano' -> 'vit_micro'" in capsys.readouterr().err


def test_missing_verification_set_is_reported_before_training(tmp_path, face_folder, capsys):
    assert train.main([str(write_config(tmp_path, face_folder, val_targets=("lfw",)))]) == 2
    assert "lfw.bin" in capsys.readouterr().err


def test_a_cnn_trains_with_dpap_and_ehsm_off_and_its_model_loads_strictly(tmp_path, face_folder):
    """mbf through the same loop (embedding only, no patch information) for one epoch of 4 SGD steps."""
    config = write_config(tmp_path, face_folder, network="mbf", dpap=False, ehsm=False, num_epoch=1,
                          batch_size=16, optimizer="sgd", lr=0.1, weight_decay=5e-4, warmup_epoch=0)
    assert train.main([str(config)]) == 0
    losses = logged_losses(tmp_path / "out")
    assert len(losses) == NUM_CLASSES * IMAGES_PER_CLASS // 16 and all(np.isfinite(losses))
    assert load_backbone("mbf", tmp_path / "out" / "model.pt").num_features == 32


@pytest.mark.parametrize("switches", [dict(dpap=True, ehsm=False), dict(dpap=False, ehsm=True),
                                      dict(dpap=False, ehsm=False, attention="explicit")])
def test_a_cnn_with_dpap_ehsm_or_attention_stops_before_training_with_one_line(tmp_path, face_folder, capsys,
                                                                               switches):
    config = write_config(tmp_path, face_folder, network="r18", **switches)
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "network 'r18' is a CNN" in err
    assert "set dpap=False and ehsm=False" in err or "attention='explicit' applies to ViTs only" in err
    assert not (tmp_path / "out" / "training.log").exists()  # stopped before logging started


# ---- progress in samples: resume with another split or another global batch (issue 28) ----

@contextlib.contextmanager
def _recording():
    """Record the learning rate of every step and the images (dataset indices) this process took, in the
    order of its forward passes. Flips are off: they are drawn per process, so they follow the split."""
    record = {"images": [], "lr": {}}
    sampler_iter, step = dataset.DistributedResumableSampler.__iter__, train.train_step
    flip = device_input.flip_and_normalize

    def recording_iter(sampler):
        for batch in sampler_iter(sampler):
            record["images"].extend(batch.tolist())
            yield batch

    def recording_step(run, micro_batches):
        record["lr"][run.step] = run.backbone_optimizer.param_groups[0]["lr"]
        return step(run, micro_batches)

    dataset.DistributedResumableSampler.__iter__ = recording_iter
    train.train_step = recording_step
    device_input.flip_and_normalize = lambda images, _flip, generator=None: flip(images, False, generator)
    try:
        yield record
    finally:
        dataset.DistributedResumableSampler.__iter__, train.train_step = sampler_iter, step
        device_input.flip_and_normalize = flip


def _train_recorded(rank, world_size, argv):
    with _recording() as record:
        assert train.main(argv) == 0
    return record


def _forward_passes(records: list[dict], steps: range, micro_batches: int, batch_size: int) -> dict:
    """{step: sorted groups of images, one group per forward pass of any process}."""
    passes = {}
    for record in records:
        groups = [sorted(record["images"][i:i + batch_size]) for i in range(0, len(record["images"]), batch_size)]
        for number, step in enumerate(steps):
            passes.setdefault(step, []).extend(groups[number * micro_batches:(number + 1) * micro_batches])
    return {step: sorted(groups) for step, groups in passes.items()}


def _final_parameters(output: Path, step: int) -> dict:
    """Backbone parameters (BatchNorm running statistics aside) and the whole class-centre matrix."""
    folder = output / "checkpoints" / f"step_{step:09d}"
    backbone = load_weights(folder / "common.pt")["backbone"]
    shards = [load_weights(path)["head"]["weight"] for path in sorted(folder.glob("rank_*.pt"))]
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    return {**{k: v for k, v in backbone.items() if not k.endswith(statistics)}, "head.weight": torch.cat(shards)}


SPLIT_RUN = dict(num_epoch=3, warmup_epoch=1, dpap=False, sample_rate=1.0, optimizer="sgd", lr=0.1,
                 weight_decay=5e-4, clip_grad_norm=0.05, save_every=6)


def test_two_ranks_then_one_process_with_the_same_global_batch_equals_two_ranks_throughout(tmp_path, face_folder):
    """Regression (issue 28): 1 process with gradient_accumulation=2 grouped other images into its forward
    passes than 2 ranks did (parameters off by 1e-2 after a resume), and kept a step counter of another batch."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    whole_config, split_config = (str(write_config(folder, face_folder, **SPLIT_RUN)) for folder in (whole, split))
    reference = run_distributed(_train_recorded, 2, [whole_config])  # 2 ranks x 8 images: 12 steps of 16
    first = run_distributed(_train_recorded, 2, [split_config, "--max-steps", "6"])
    with _recording() as second:
        assert train.main([split_config, "--resume", "auto", "--set", "global_batch_size=16"]) == 0
    assert "global batch" not in (split / "out" / "training.log").read_text()  # 16 -> 16: nothing changed
    assert first[0]["lr"] | second["lr"] == reference[0]["lr"] and len(reference[0]["lr"]) == 12
    passes = _forward_passes(first, range(6), 1, 8) | _forward_passes([second], range(6, 12), 2, 8)
    assert passes == _forward_passes(reference, range(12), 1, 8)
    expected, resumed = _final_parameters(whole / "out", 12), _final_parameters(split / "out", 12)
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, atol=2e-5, rtol=1e-4, msg=key)


def test_a_resume_with_half_the_global_batch_continues_the_epoch_and_the_learning_rate_curve(tmp_path, face_folder):
    """3 steps of 16 images, then steps of 8: the resumed run starts at image 48 of epoch 0, ends after the
    planned 2 x 64 samples, and each step's learning rate is the schedule's at the samples seen before it."""
    config = str(write_config(tmp_path, face_folder, num_epoch=2, warmup_epoch=1, save_every=3))
    with _recording() as first:
        assert train.main([config, "--max-steps", "3", "--set", "gradient_accumulation=2"]) == 0
    with _recording() as second:
        assert train.main([config, "--resume", "auto"]) == 0
    log_text = (tmp_path / "out" / "training.log").read_text()
    assert "global batch changed from 16 to 8" in log_text
    assert "kept 48 samples seen, epoch 0 from image 48" in log_text
    epochs = [dataset.DistributedResumableSampler(64, seed=7) for _ in range(2)]
    for epoch, sampler in enumerate(epochs):
        sampler.set_epoch(epoch)
    permutations = [sampler.permutation().tolist() for sampler in epochs]
    # Each step of 16 takes the next 16 of the permutation (interleaved over its 2 micro-batches); the
    # resumed steps of 8 continue at image 48: no image twice, none skipped.
    assert [sorted(first["images"][16 * step:16 * (step + 1)]) for step in range(3)] == [
        sorted(permutations[0][16 * step:16 * (step + 1)]) for step in range(3)]
    assert second["images"] == permutations[0][48:] + permutations[1]
    final = load_weights(tmp_path / "out" / "checkpoints" / f"step_{3 + 10:09d}" / "common.pt")
    assert final["samples"] == 2 * 64 and final["step"] == 13 and "lr" not in final
    samples_before = [16 * step for step in range(3)] + [48 + 8 * step for step in range(10)]
    assert list(first["lr"].values()) + list(second["lr"].values()) == [
        lr_at(samples, 1e-3, 128, 64) for samples in samples_before]


def test_a_resume_with_another_global_batch_still_saves_at_the_epoch_end(tmp_path, face_folder):
    """Regression: epoch-end saves were placed at multiples of the new steps_per_epoch (8 steps of 8), so after
    1 step of 16 the end of epoch 0 (step 1 + 48 / 8 = 7) got no checkpoint and step 8, mid-epoch, got one."""
    config = str(write_config(tmp_path, face_folder, num_epoch=2))  # 64 images, save_every 0: epoch ends only
    assert train.main([config, "--max-steps", "1", "--set", "gradient_accumulation=2"]) == 0
    assert train.main([config, "--resume", "auto", "--max-steps", "8"]) == 0
    folders = sorted((tmp_path / "out" / "checkpoints").glob("step_*"))
    assert [folder.name for folder in folders] == ["step_000000001", "step_000000007", "step_000000008"]
    epoch_end = load_weights(folders[1] / "common.pt")
    assert (epoch_end["samples"], epoch_end["epoch"], epoch_end["epoch_samples"]) == (64, 0, 64)


def test_a_checkpoint_without_a_samples_count_resumes_from_step_times_its_global_batch(tmp_path, face_folder,
                                                                                      uninterrupted):
    """Checkpoints written before progress was counted in samples hold only the step (schema of commit b61837d)."""
    config = str(write_config(tmp_path, face_folder, save_every=3))
    assert train.main([config, "--max-steps", "10"]) == 0
    common_path = tmp_path / "out" / "checkpoints" / "step_000000010" / "common.pt"
    common = load_weights(common_path)
    assert (common["samples"], common["epoch"], common["epoch_samples"]) == (80, 1, 16)
    old = {key: value for key, value in common.items() if key not in ("samples", "epoch", "epoch_samples")}
    checkpoint._save(old, common_path)
    assert train.main([config, "--resume", "auto"]) == 0
    assert_same_weights(load_weights(tmp_path / "out" / "model.pt"), load_weights(uninterrupted / "model.pt"))
