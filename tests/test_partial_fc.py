"""Partial FC against F.cross_entropy on margin logits, in one process and over 2 and 3 gloo processes
(uneven class split), with sampling, optimizer steps, sharding round trips and clear errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from losses import CombinedMarginLoss
from partial_fc import (
    PartialFC,
    add_optimizer_rows,
    class_range,
    gather_full_weight,
    init_class_centres,
    saved_ranks_overlapping,
    shard_weight,
)
from tests.dist_utils import run_distributed
from utils.errors import UserError

NUM_CLASSES = 11  # split 6/5 over 2 processes, 4/4/3 over 3
EMBEDDING_SIZE = 16
INPUT_SIZE = 6
GLOBAL_BATCH = 12  # 6 per process for 2 processes, 4 for 3
SEED = 7
MARGINS = {  # (s, m1, m2, m3, exact_gradient)
    "arcface": (64.0, 1.0, 0.5, 0.0, False),
    "arcface_exact": (64.0, 1.0, 0.5, 0.0, True),
    "cosface": (64.0, 1.0, 0.0, 0.4, False),
}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def assert_close_at_scale(actual, expected, tolerance=1e-5):
    """Equal to `tolerance` relative to the largest entry of `expected`: a gradient entry that nearly
    cancels (centre gradients reach ~100 here) carries float32 rounding of that scale, not of itself."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale)


def margin_loss(name: str = "arcface") -> CombinedMarginLoss:
    s, m1, m2, m3, exact = MARGINS[name]
    return CombinedMarginLoss(s, m1, m2, m3, exact_gradient=exact)


def reference_loss(embeddings, centres, labels, sample_weights=None, name="arcface"):
    """−(1/N) Σ w_n log softmax(s · logits)_{y_n} with F.cross_entropy, the margin written out directly."""
    s, m1, m2, m3, exact = MARGINS[name]
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(centres, dim=1).T  # [N, C]
    is_target = F.one_hot(labels, centres.shape[0]).bool()  # [N, C]
    with_margin = torch.cos(m1 * torch.arccos(cosine) + m2) - m3
    if not exact:  # released: the backward sees the plain cosine
        with_margin = cosine + (with_margin - cosine).detach()
    logits = s * torch.where(is_target, with_margin, cosine)
    per_sample = F.cross_entropy(logits, labels, reduction="none")  # [N]
    if sample_weights is not None:
        per_sample = per_sample * sample_weights
    return per_sample.mean()


def make_batch(seed: int, num_samples: int = GLOBAL_BATCH, classes=None):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_samples, EMBEDDING_SIZE, generator=generator)
    if classes is None:
        labels = torch.randint(0, NUM_CLASSES, (num_samples,), generator=generator)
    else:
        labels = torch.tensor(classes)[torch.randint(0, len(classes), (num_samples,), generator=generator)]
    sample_weights = 1.0 + torch.rand(num_samples, generator=generator)
    return embeddings, labels, sample_weights


def make_optimizer(name: str, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=0.1)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)


def record_samples(pfc: PartialFC) -> list:
    """Spy on pfc.sample_centres: the returned list receives the global class ids used at each step."""
    record = []
    sample_centres = pfc.sample_centres

    def recording(labels):
        sampled = sample_centres(labels)
        record.append(sampled.index + pfc.class_start)
        return sampled

    pfc.sample_centres = recording
    return record


# ---- one process ----

@pytest.mark.parametrize("name", MARGINS)
def test_one_process_equals_cross_entropy_on_margin_logits(name):
    embeddings, labels, _ = make_batch(0)
    embeddings.requires_grad_(True)
    pfc = PartialFC(margin_loss(name), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    loss = pfc(embeddings, labels)
    loss.backward()

    ref_embeddings = embeddings.detach().clone().requires_grad_(True)
    ref_centres = pfc.weight.detach().clone().requires_grad_(True)
    expected = reference_loss(ref_embeddings, ref_centres, labels, name=name)
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    assert_close_at_scale(embeddings.grad, ref_embeddings.grad)
    assert_close_at_scale(pfc.weight.grad, ref_centres.grad)


def test_sample_weights_give_the_weighted_mean_over_the_batch():
    embeddings, labels, sample_weights = make_batch(1)
    embeddings.requires_grad_(True)
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    loss = pfc(embeddings, labels, sample_weights)
    loss.backward()

    ref_embeddings = embeddings.detach().clone().requires_grad_(True)
    ref_centres = pfc.weight.detach().clone().requires_grad_(True)
    expected = reference_loss(ref_embeddings, ref_centres, labels, sample_weights)
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    assert_close_at_scale(embeddings.grad, ref_embeddings.grad)
    assert_close_at_scale(pfc.weight.grad, ref_centres.grad)


def test_sampling_keeps_every_positive_and_equals_loss_on_the_sampled_classes():
    torch.manual_seed(0)
    num_classes = 40
    embeddings, labels, sample_weights = make_batch(2, num_samples=8, classes=[3, 17, 18, 39])
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, num_classes, sample_rate=0.25, seed=SEED)
    record = record_samples(pfc)
    loss = pfc(embeddings, labels, sample_weights)
    loss.backward()
    sampled = record[0]
    assert sampled.numel() == 10 and set(labels.tolist()) <= set(sampled.tolist())

    ref_centres = pfc.weight.detach().clone().requires_grad_(True)
    expected = reference_loss(embeddings, ref_centres[sampled], torch.searchsorted(sampled, labels),
                              sample_weights)
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    assert_close_at_scale(pfc.weight.grad, ref_centres.grad)
    not_sampled = torch.ones(num_classes, dtype=torch.bool)
    not_sampled[sampled] = False
    assert torch.all(pfc.weight.grad[not_sampled] == 0)


@pytest.mark.parametrize(("sample_rate", "classes", "expected"), [
    (0.7, [0], 7),  # 0.7 · 10 = 7.000000000000001 in floating point: still 7
    (0.05, [0], 1),  # ceil(0.5)
    (0.05, [2, 5, 9], 3),  # more positives than the rate allows: all kept
])
def test_number_of_sampled_centres_is_ceil_of_rate_or_number_of_positives(sample_rate, classes, expected):
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, 10, sample_rate=sample_rate)
    sampled = pfc.sample_centres(torch.tensor(classes))
    assert sampled.index.numel() == expected
    assert torch.equal(sampled.index[sampled.labels], torch.tensor(classes))


def test_sampling_with_a_seeded_generator_repeats_and_other_seeds_differ():
    labels = torch.tensor([5])
    draws = [PartialFC(margin_loss(), EMBEDDING_SIZE, 1000, sample_rate=0.01,
                       generator=torch.Generator().manual_seed(seed)).sample_centres(labels).index
             for seed in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert 5 in draws[0].tolist()


def test_centres_not_sampled_in_a_step_still_move_by_momentum():
    """The documented choice: a dense zero gradient, so SGD momentum keeps moving idle centres."""
    torch.manual_seed(0)
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, 40, sample_rate=0.1, seed=SEED)
    record = record_samples(pfc)
    optimizer = torch.optim.SGD(pfc.parameters(), lr=1e-3, momentum=0.9)
    embeddings, _, _ = make_batch(3, num_samples=4)
    first_grad = None
    for labels in (torch.tensor([1, 2, 1, 2]), torch.tensor([30, 31, 30, 31])):
        before = pfc.weight.detach().clone()
        optimizer.zero_grad()
        pfc(embeddings, labels).backward()
        first_grad = pfc.weight.grad.clone() if first_grad is None else first_grad
        optimizer.step()
    idle = torch.tensor(sorted(set(record[0].tolist()) - set(record[1].tolist())))
    assert idle.numel() > 0
    expected = before[idle] - 1e-3 * 0.9 * first_grad[idle]
    torch.testing.assert_close(pfc.weight.detach()[idle], expected)


def test_bf16_autocast_runs_the_product_in_bf16_and_returns_an_fp32_loss():
    embeddings, labels, _ = make_batch(4)
    pfc = PartialFC(margin_loss("cosface"), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    full_precision = pfc(embeddings, labels)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = pfc(embeddings.requires_grad_(True), labels)
    mixed.backward()
    assert mixed.dtype == torch.float32 and torch.isfinite(embeddings.grad).all()
    assert not torch.equal(mixed, full_precision)  # the bf16 product changed the cosines
    torch.testing.assert_close(mixed, full_precision, rtol=0.05, atol=0.0)


@pytest.mark.parametrize("bad_label", [NUM_CLASSES, -1])
def test_label_out_of_range_raises_user_error_naming_label_and_num_classes(bad_label):
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES)
    with pytest.raises(UserError, match=rf"label {bad_label} .*\[0, {NUM_CLASSES}\).*num_classes"):
        pfc(torch.randn(3, EMBEDDING_SIZE), torch.tensor([0, bad_label, 1]))


def test_after_the_first_step_a_label_out_of_range_makes_the_loss_nan():
    """Later steps skip the host-side label check; the cross-entropy's holder count flags the sample."""
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES)
    assert torch.isfinite(pfc(torch.randn(3, EMBEDDING_SIZE), torch.tensor([0, 1, 2])))
    assert torch.isnan(pfc(torch.randn(3, EMBEDDING_SIZE), torch.tensor([0, NUM_CLASSES, 2])))
    with pytest.raises(UserError, match=f"label {NUM_CLASSES}"):  # a new batch size is checked again
        pfc(torch.randn(2, EMBEDDING_SIZE), torch.tensor([0, NUM_CLASSES]))


def test_after_the_first_step_forward_and_backward_make_no_host_sync(monkeypatch):
    """Regression: every step read the label check (and, with several ranks, the batch sizes) back to
    the host, stalling the GPU's queue mid-step."""
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES)
    embeddings, labels, sample_weights = make_batch(5)
    pfc(embeddings, labels, sample_weights)

    def host_sync(*_):
        raise AssertionError("a tensor was read back to the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    pfc(embeddings.requires_grad_(True), labels, sample_weights).backward()


@pytest.mark.parametrize("sample_rate", [0.0, -0.1, 1.5])
def test_sample_rate_outside_zero_one_raises_user_error(sample_rate):
    with pytest.raises(UserError, match="sample_rate"):
        PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, sample_rate=sample_rate)


def test_embedding_width_mismatch_raises_user_error_naming_embedding_size():
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES)
    with pytest.raises(UserError, match="embedding_size"):
        pfc(torch.randn(3, EMBEDDING_SIZE + 1), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("num_classes", [10, 20000])
def test_initial_centres_do_not_depend_on_the_split(num_classes):
    full = init_class_centres(num_classes, 4, 0, num_classes, seed=SEED)
    for world_size in (2, 3, 7):
        shards = [init_class_centres(num_classes, 4, *class_range(num_classes, rank, world_size), seed=SEED)
                  for rank in range(world_size)]
        assert torch.equal(torch.cat(shards), full)
    assert not torch.equal(full, init_class_centres(num_classes, 4, 0, num_classes, seed=SEED + 1))


def test_initial_centres_are_normal_with_std_0_01():
    full = init_class_centres(20000, 8, 0, 20000, seed=SEED)
    assert abs(full.std().item() - 0.01) < 2e-4 and abs(full.mean().item()) < 2e-4


@pytest.mark.parametrize("num_classes", [10, 7, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_class_ranges_are_contiguous_cover_all_classes_and_differ_by_at_most_one(num_classes, world_size):
    ranges = [class_range(num_classes, rank, world_size) for rank in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(world_size - 1))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shards_of_any_world_size_join_back_into_the_full_matrix():
    full = torch.randn(NUM_CLASSES, EMBEDDING_SIZE)
    for world_size in (1, 2, 3, 4):
        assert torch.equal(torch.cat([shard_weight(full, rank, world_size) for rank in range(world_size)]), full)
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES)
    pfc.load_full_weight(full)
    assert torch.equal(pfc.weight.detach(), full) and torch.equal(pfc.full_weight(), full)
    assert torch.equal(gather_full_weight(pfc.weight, NUM_CLASSES), full)


def test_state_dict_round_trip_and_shard_mismatch_raises_user_error():
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, seed=1)
    copy = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, seed=2)
    copy.load_state_dict(pfc.state_dict())
    assert torch.equal(copy.weight, pfc.weight)
    other = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES + 2)
    with pytest.raises(UserError, match=rf"classes \[0, {NUM_CLASSES}\) of {NUM_CLASSES}.*load_full_weight"):
        other.load_state_dict(pfc.state_dict())
    with pytest.raises(UserError, match="num_classes"):
        other.load_full_weight(pfc.full_weight())


# ---- several processes ----

def distributed_worker(rank: int, world_size: int, case: dict) -> dict:
    torch.manual_seed(100 + rank)  # ranks draw different negatives, as seed_everything(seed, rank) does
    batch = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    result = {}

    backbone = nn.Linear(INPUT_SIZE, EMBEDDING_SIZE)
    backbone.load_state_dict(case["backbone"])
    model = DistributedDataParallel(backbone)
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    result["initial_full_weight"] = pfc.full_weight()
    embeddings = model(case["inputs"][batch])
    embeddings.retain_grad()
    loss = pfc(embeddings, case["labels"][batch], case["weights"][batch])
    loss.backward()
    result.update(loss=loss.detach(), embedding_grad=embeddings.grad, centre_grad=pfc.weight.grad,
                  backbone_grad=[p.grad for p in backbone.parameters()])

    for optimizer_name in ("sgd", "adamw"):
        pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, sample_rate=0.5, seed=SEED)
        record = record_samples(pfc)
        optimizer = make_optimizer(optimizer_name, pfc.parameters())
        losses = []
        for step_embeddings, step_labels in zip(case["step_embeddings"], case["step_labels"]):
            optimizer.zero_grad()
            loss = pfc(step_embeddings[batch], step_labels[batch], case["weights"][batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        state = optimizer.state[pfc.weight]
        first_state = state["momentum_buffer"] if optimizer_name == "sgd" else state["exp_avg"]
        result[optimizer_name] = dict(losses=losses, sampled=record, full_weight=pfc.full_weight(),
                                      full_state=gather_full_weight(first_state, NUM_CLASSES))

    result["round_trip_exact"] = torch.equal(shard_weight(pfc.full_weight(), rank, world_size),
                                             pfc.weight.detach())
    result["errors"] = [_user_error_of(case, batch, rank, world_size, kind) for kind in ("label", "size")]
    embeddings, labels = case["step_embeddings"][0][batch], _bad_label_on_last_rank(case, batch, rank, world_size)
    result["later_bad_label_loss"] = pfc(embeddings, labels).detach()  # pfc checked this batch size already
    return result


def _bad_label_on_last_rank(case, batch, rank, world_size) -> torch.Tensor:
    labels = case["labels"][batch].clone()
    if rank == world_size - 1:
        labels[0] = NUM_CLASSES + 5
    return labels


def _user_error_of(case, batch, rank, world_size, kind) -> str:
    """The UserError this rank raises in a first step where only the last rank passes a bad label or a
    shorter batch."""
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    embeddings, labels = case["step_embeddings"][0][batch], case["labels"][batch]
    if kind == "label":
        labels = _bad_label_on_last_rank(case, batch, rank, world_size)
    if rank == world_size - 1 and kind == "size":
        embeddings, labels = embeddings[:-1], labels[:-1]
    try:
        pfc(embeddings, labels)
    except UserError as error:
        return str(error)
    return ""


def reference_sampled_steps(case: dict, optimizer_name: str, sampled_per_step: list):
    """One process on the full centre matrix, each step restricted to the classes the run sampled."""
    centres = nn.Parameter(init_class_centres(NUM_CLASSES, EMBEDDING_SIZE, 0, NUM_CLASSES, seed=SEED))
    optimizer = make_optimizer(optimizer_name, [centres])
    losses = []
    for sampled, step_embeddings, step_labels in zip(sampled_per_step, case["step_embeddings"],
                                                     case["step_labels"]):
        optimizer.zero_grad()
        loss = reference_loss(step_embeddings, centres[sampled], torch.searchsorted(sampled, step_labels),
                              case["weights"])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    state = optimizer.state[centres]
    return losses, centres.detach(), state["momentum_buffer" if optimizer_name == "sgd" else "exp_avg"]


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}_processes")
def distributed_case(request):
    """(world_size, case, per-rank results, the one-process reference of the first step): one run of
    `distributed_worker` per world size, shared by the tests below, each of which pins one property."""
    world_size = request.param
    inputs, labels, weights = make_batch(10, classes=None)
    inputs = inputs[:, :INPUT_SIZE].contiguous()
    step_batches = [make_batch(11 + step, classes=[1, 4, 8]) for step in range(2)]
    backbone = nn.Linear(INPUT_SIZE, EMBEDDING_SIZE)
    case = dict(backbone=backbone.state_dict(), inputs=inputs, labels=labels, weights=weights,
                step_embeddings=[b[0] for b in step_batches], step_labels=[b[1] for b in step_batches])
    results = run_distributed(distributed_worker, world_size, case)

    centres = init_class_centres(NUM_CLASSES, EMBEDDING_SIZE, 0, NUM_CLASSES, seed=SEED).requires_grad_(True)
    embeddings = backbone(inputs)
    embeddings.retain_grad()
    loss = reference_loss(embeddings, centres, labels, weights)
    loss.backward()
    reference = dict(loss=loss.detach(), centres=centres.detach(), centre_grad=centres.grad,
                     embedding_grad=embeddings.grad, backbone_grad=[p.grad for p in backbone.parameters()])
    return world_size, case, results, reference


@pytest.mark.slow
def test_distributed_initial_centres_equal_the_one_process_matrix(distributed_case):
    _, _, results, reference = distributed_case
    for result in results:
        assert torch.equal(result["initial_full_weight"], reference["centres"])


@pytest.mark.slow
def test_distributed_loss_equals_one_process_on_the_same_global_batch(distributed_case):
    _, _, results, reference = distributed_case
    for result in results:
        torch.testing.assert_close(result["loss"], reference["loss"], **TOLERANCE)


@pytest.mark.slow
def test_distributed_backbone_gradients_after_ddp_averaging_equal_one_process(distributed_case):
    _, _, results, reference = distributed_case
    for result in results:
        for got, want in zip(result["backbone_grad"], reference["backbone_grad"], strict=True):
            assert_close_at_scale(got, want)


@pytest.mark.slow
def test_distributed_centre_gradient_shards_join_into_the_one_process_gradient(distributed_case):
    _, _, results, reference = distributed_case
    assert_close_at_scale(torch.cat([r["centre_grad"] for r in results]), reference["centre_grad"])


@pytest.mark.slow
def test_each_rank_embedding_gradient_is_world_size_times_the_one_process_gradient(distributed_case):
    """DDP divides the backbone gradient by the world size; the gather's backward multiplies it back."""
    world_size, _, results, reference = distributed_case
    gathered_grad = torch.cat([r["embedding_grad"] for r in results]) / world_size
    assert_close_at_scale(gathered_grad, reference["embedding_grad"])


def _sampled_per_step(case, results, optimizer_name) -> list[torch.Tensor]:
    """The global class ids sampled at each step, joined over the ranks."""
    return [torch.cat([r[optimizer_name]["sampled"][step] for r in results])
            for step in range(len(case["step_labels"]))]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_distributed_sampling_keeps_every_positive_and_drops_some_negatives(distributed_case, optimizer_name):
    _, case, results, _ = distributed_case
    for sampled, step_labels in zip(_sampled_per_step(case, results, optimizer_name), case["step_labels"],
                                    strict=True):
        assert set(step_labels.tolist()) <= set(sampled.tolist())
        assert sampled.numel() < NUM_CLASSES


@pytest.mark.slow
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_distributed_sampled_steps_equal_one_process_on_the_sampled_classes(distributed_case, optimizer_name):
    """Losses, centres and the optimizer state after SGD-momentum / AdamW steps with sampling."""
    _, case, results, _ = distributed_case
    losses, full_weight, full_state = reference_sampled_steps(case, optimizer_name,
                                                              _sampled_per_step(case, results, optimizer_name))
    for result in results:
        torch.testing.assert_close(result[optimizer_name]["losses"], losses, **TOLERANCE)
        assert_close_at_scale(result[optimizer_name]["full_weight"], full_weight)
        assert_close_at_scale(result[optimizer_name]["full_state"], full_state)


@pytest.mark.slow
def test_gathering_and_resharding_the_centres_is_exact(distributed_case):
    _, _, results, _ = distributed_case
    assert [result["round_trip_exact"] for result in results] == [True] * len(results)


@pytest.mark.slow
def test_a_bad_label_on_one_rank_raises_the_same_user_error_on_every_rank(distributed_case):
    _, _, results, _ = distributed_case
    for result in results:
        label_error = result["errors"][0]
        assert f"label {NUM_CLASSES + 5}" in label_error and "num_classes" in label_error


@pytest.mark.slow
def test_a_shorter_batch_on_one_rank_raises_the_same_user_error_on_every_rank(distributed_case):
    world_size, _, results, _ = distributed_case
    per_rank = GLOBAL_BATCH // world_size
    for result in results:
        assert f"{per_rank - 1} to {per_rank} samples" in result["errors"][1]


def test_optimizer_state_saved_by_three_ranks_reshards_to_two_exactly():
    """Per-class rows are re-split; step counts and hyper-parameters are kept."""
    full = torch.randn(NUM_CLASSES, EMBEDDING_SIZE)
    saved = [{"state": {0: {"exp_avg": shard_weight(full, rank, 3), "step": torch.tensor(5.0)}},
              "param_groups": [{"lr": 0.1, "params": [0]}]} for rank in range(3)]
    resharded = []
    for rank in range(2):
        start, stop = class_range(NUM_CLASSES, rank, 2)
        state = None
        for saved_rank in saved_ranks_overlapping(NUM_CLASSES, 3, rank, 2):
            state = add_optimizer_rows(state, saved[saved_rank], class_range(NUM_CLASSES, saved_rank, 3)[0],
                                       start, stop)
        resharded.append(state)
    assert torch.equal(torch.cat([r["state"][0]["exp_avg"] for r in resharded]), full)
    assert [len(r["state"][0]["exp_avg"]) for r in resharded] == [6, 5]
    assert all(r["state"][0]["step"] == 5.0 and r["param_groups"] == saved[0]["param_groups"] for r in resharded)


def test_each_rank_reads_only_the_saved_shards_that_overlap_its_classes():
    """Regression: every rank read every saved shard when the world size changed (issue 23)."""
    for saved_world, world_size in ((3, 2), (2, 5), (5, 1), (1, 3), (4, 2)):
        for rank in range(world_size):
            start, stop = class_range(NUM_CLASSES, rank, world_size)
            needed = saved_ranks_overlapping(NUM_CLASSES, saved_world, rank, world_size)
            saved = [class_range(NUM_CLASSES, r, saved_world) for r in range(saved_world)]
            holders = {r for c in range(start, stop) for r, (lo, hi) in enumerate(saved) if lo <= c < hi}
            assert needed == sorted(holders)


@pytest.mark.slow
def test_a_later_bad_label_on_one_rank_makes_the_loss_nan_on_every_rank(distributed_case):
    _, _, results, _ = distributed_case
    assert all(torch.isnan(result["later_bad_label_loss"]) for result in results)


# ---- the fused buffer (one [N, S] float32 tensor for cosines, logits, softmax and gradient) ----

FUSED_CASES = {  # margin head, autocast dtype or None
    "arcface": (lambda: margin_loss("arcface"), None),
    "arcface_exact": (lambda: margin_loss("arcface_exact"), None),
    "cosface_bf16": (lambda: margin_loss("cosface"), torch.bfloat16),
    "arcface_filtered": (lambda: CombinedMarginLoss(64.0, 1.0, 0.5, 0.0, interclass_filtering_threshold=0.2), None),
}


def _loss_and_grads(pfc, embeddings, labels, sample_weights, dtype):
    embeddings = embeddings.clone().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = pfc(embeddings, labels, sample_weights)
    loss.backward()
    return loss.detach(), embeddings.grad, pfc.weight.grad


@pytest.mark.parametrize("sample_rate", [1.0, 0.3])
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_loss_is_bitwise_the_unfused_composition_and_gradients_agree(case, sample_rate):
    """Regression guard of the one-buffer path against the autograd composition it replaced (cosines,
    margin head forward, cross-entropy as separate tensors): same loss bit for bit, gradients to float32
    rounding (the centre-norm term is computed as c · Σ g u instead of Σ g (u · c)). Rows 0-7 are copies
    of centres of other classes of the batch, so both paths clamp cosines just above 1 (five at full
    rate); at cos θ = ±1 the cosine's gradient is radial and the normalisations remove it, so that
    clamp changes the gradients only by rounding."""
    from bench.pfc_baseline import unfused_like

    make_head, dtype = FUSED_CASES[case]
    embeddings, labels, sample_weights = make_batch(20, num_samples=24, classes=list(range(0, 40, 3)))
    pfc = PartialFC(make_head(), EMBEDDING_SIZE, 40, sample_rate, seed=SEED,
                    generator=torch.Generator().manual_seed(1))
    embeddings[:8] = 3.0 * pfc.weight.detach()[labels[8:16]]
    unfused = unfused_like(pfc)
    unfused.generator = torch.Generator().manual_seed(1)
    fused = _loss_and_grads(pfc, embeddings, labels, sample_weights, dtype)
    expected = _loss_and_grads(unfused, embeddings, labels, sample_weights, dtype)
    assert torch.equal(fused[0], expected[0])
    tolerance = 1e-5 if dtype is None else 2e-2  # bf16 products: both are within bf16 rounding of the truth
    assert_close_at_scale(fused[1], expected[1], tolerance)
    assert_close_at_scale(fused[2], expected[2], tolerance)


def _saved_bytes_per_logit(pfc, embeddings, labels) -> float:
    """Bytes of the distinct logit-sized storages (at least N · C bytes) autograd keeps for backward, per
    element of the [N, C] logits."""
    num_logits = embeddings.shape[0] * pfc.num_local
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.nbytes() >= num_logits:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        pfc(embeddings.requires_grad_(True), labels)
    return sum(storages.values()) / num_logits


def test_backward_keeps_one_float32_buffer_and_one_bool_mask_per_logit():
    """Regression: the loss kept the cosines, the margin logits, their scaled copy and the softmax
    (20 bytes per logit element saved for backward); now 4 (the softmax, overwritten in place by the
    gradient) + 1 (the mask of clamped or filtered entries)."""
    from bench.pfc_baseline import unfused_like

    embeddings, labels, _ = make_batch(21, num_samples=256)
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, 4096, seed=SEED)
    assert _saved_bytes_per_logit(pfc, embeddings, labels) == 5.0
    assert _saved_bytes_per_logit(unfused_like(pfc), embeddings, labels) >= 16.0


def test_backward_through_the_same_loss_twice_raises():
    """The softmax buffer becomes the gradient in place, so a second backward would be wrong, not repeated."""
    embeddings, labels, _ = make_batch(22)
    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    loss = pfc(embeddings.requires_grad_(True), labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()


class _ReweightedNegatives(nn.Module):
    """A test head of the MarginHead protocol with a float slope on the non-target cosines: CosFace
    target, and every other cosine c becomes c · (t + c) (CurricularFace's form with a fixed t)."""

    s, m, t = 32.0, 0.3, 0.2

    def margin_value_and_slope(self, cos_target, rows):
        return cos_target - self.m, torch.ones_like(cos_target)

    def adjust_non_targets_(self, cosine, target_column, has_target, target_value, rows):
        slope = self.t + 2.0 * cosine  # [N, S], d/dc of c · (t + c)
        cosine.mul_(cosine + self.t)
        return slope


def test_a_head_with_a_float_slope_on_the_other_cosines_gets_the_exact_gradient():
    head = _ReweightedNegatives()
    embeddings, labels, sample_weights = make_batch(23)
    embeddings.requires_grad_(True)
    pfc = PartialFC(head, EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    loss = pfc(embeddings, labels, sample_weights)
    loss.backward()

    ref_embeddings = embeddings.detach().clone().requires_grad_(True)
    ref_centres = pfc.weight.detach().clone().requires_grad_(True)
    cosine = F.normalize(ref_embeddings, dim=1) @ F.normalize(ref_centres, dim=1).T  # [N, C]
    is_target = F.one_hot(labels, NUM_CLASSES).bool()  # [N, C]
    logits = head.s * torch.where(is_target, cosine - head.m, cosine * (head.t + cosine))
    expected = (F.cross_entropy(logits, labels, reduction="none") * sample_weights).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    assert_close_at_scale(embeddings.grad, ref_embeddings.grad)
    assert_close_at_scale(pfc.weight.grad, ref_centres.grad)


# ---- centre_update: which rows the optimizer steps with sampling ----

def _head_config(centre_update: str, optimizer: str = "adamw") -> dict:
    from easydict import EasyDict

    return EasyDict(optimizer=optimizer, lr=1e-2, momentum=0.9, weight_decay=0.1, betas=(0.9, 0.999),
                    no_weight_decay_on_norm_bias=False, centre_update=centre_update)


def _released_sub_parameter_adamw(weight, state, rows, grad, step, lr=1e-2, weight_decay=0.1):
    """The released PartialFCAdamW step: torch's AdamW on a sub-parameter of the sampled rows whose
    state is the rows of the full moments and the shard's step count, written back after the step."""
    sub = nn.Parameter(weight[rows].clone())
    sub.grad = grad[rows].clone()
    optimizer = torch.optim.AdamW([sub], lr=lr, weight_decay=weight_decay)
    optimizer.state[sub] = {"step": torch.tensor(float(step - 1)), "exp_avg": state["exp_avg"][rows].clone(),
                            "exp_avg_sq": state["exp_avg_sq"][rows].clone()}
    optimizer.step()
    weight[rows] = sub.detach()
    state["exp_avg"][rows] = optimizer.state[sub]["exp_avg"]
    state["exp_avg_sq"][rows] = optimizer.state[sub]["exp_avg_sq"]


def test_sampled_centre_update_steps_only_the_sampled_rows_and_their_moments_as_released():
    """Two optimizer steps at rate 0.25, the second over two accumulated micro-batches (the union of
    their rows is stepped), against torch's AdamW on the released sub-parameter."""
    from utils.optim import SampledRowsAdamW, build_head_optimizer

    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, 40, sample_rate=0.25, seed=SEED,
                    generator=torch.Generator().manual_seed(4))
    record = record_samples(pfc)
    optimizer = build_head_optimizer(_head_config("sampled"), pfc)
    assert isinstance(optimizer, SampledRowsAdamW)
    weight = pfc.weight.detach().clone()
    state = {"exp_avg": torch.zeros_like(weight), "exp_avg_sq": torch.zeros_like(weight)}
    for step, micro_batches in enumerate(([[1, 2, 1, 2]], [[30, 31, 30, 31], [5, 6, 5, 6]]), start=1):
        optimizer.zero_grad()
        for labels in micro_batches:
            pfc(make_batch(step, num_samples=4)[0], torch.tensor(labels)).backward()
        rows = torch.unique(torch.cat(record[-len(micro_batches):]))
        _released_sub_parameter_adamw(weight, state, rows, pfc.weight.grad, step)
        optimizer.step()
        torch.testing.assert_close(pfc.weight.detach(), weight, rtol=1e-6, atol=1e-7)
        for key in state:
            torch.testing.assert_close(optimizer.state[pfc.weight][key], state[key], rtol=1e-6, atol=1e-9)
    never = torch.ones(40, dtype=torch.bool)
    never[torch.cat(record)] = False
    assert never.any() and torch.equal(pfc.weight.detach()[never], init_class_centres(40, EMBEDDING_SIZE, 0, 40,
                                                                                      seed=SEED)[never])
    assert torch.all(optimizer.state[pfc.weight]["exp_avg"][never] == 0)


def test_default_centre_update_is_torch_adamw_over_every_row():
    """The default keeps the previous optimizer exactly: the same class and parameter groups."""
    from utils.optim import build_head_optimizer, build_optimizer

    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, 40, sample_rate=0.25, seed=SEED)
    default, previous = build_head_optimizer(_head_config("all"), pfc), build_optimizer(_head_config("all"), [pfc])
    assert type(default) is torch.optim.AdamW
    assert default.state_dict() == previous.state_dict()


def test_sampled_centre_update_with_sgd_raises_user_error_naming_both_keys():
    from utils.optim import build_head_optimizer

    pfc = PartialFC(margin_loss(), EMBEDDING_SIZE, NUM_CLASSES)
    with pytest.raises(UserError, match="centre_update 'sampled' needs optimizer 'adamw'"):
        build_head_optimizer(_head_config("sampled", optimizer="sgd"), pfc)
