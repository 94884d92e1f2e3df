"""Every margin head on Partial FC does not depend on the number of processes (1, 2 and 3 gloo ranks
against one process without a process group: loss, gradients, state, UniFace's bias gradient), with
sample_rate 0.5 (against the same head on the sampled columns alone, in one process and on two), with
EHSM weights and under bf16 autocast."""

import pytest
import torch

import losses
from partial_fc import PartialFC, init_class_centres
from tests.dist_utils import run_distributed

NAMES = tuple(name for name in losses.LOSS_NAMES if name != "combined")
GLOBAL_BATCH, EMBEDDING_SIZE, NUM_CLASSES, SEED, STEPS = 12, 8, 10, 7, 2


def make_case() -> dict:
    generator = torch.Generator().manual_seed(11)
    # Norms spread over about 4 to 45, so MagFace's clamp to [10, 110] binds for some rows, as in the fixtures.
    scale = torch.linspace(1.5, 16.0, GLOBAL_BATCH).unsqueeze(1)
    return dict(embeddings=[torch.randn(GLOBAL_BATCH, EMBEDDING_SIZE, generator=generator) * scale
                            for _ in range(STEPS)],
                labels=[torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=generator) for _ in range(STEPS)],
                weights=1.0 + torch.rand(GLOBAL_BATCH, generator=generator))


def head_state(head) -> dict:
    state = {k: v.detach().clone() for k, v in head.state_dict().items() if torch.is_tensor(v)}
    if hasattr(head, "generator"):
        state["generator"] = head.generator.get_state()
    if hasattr(head, "bias"):
        state["bias_grad"] = head.bias.grad.clone()
    return state


def run_heads(rank: int, world_size: int, case: dict) -> dict:
    """Two steps of every head; the gradient of the global loss for this rank's embeddings (the gather's
    backward multiplies it by the world size, for DDP's averaging) and centres, and the head's state."""
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    results = {}
    for name in NAMES:
        head = losses.get_margin_loss(name, seed=3)
        pfc = PartialFC(head, EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
        steps = []
        for embeddings, labels in zip(case["embeddings"], case["labels"]):
            embeddings = embeddings[rows].clone().requires_grad_(True)
            pfc.zero_grad()
            loss = pfc(embeddings, labels[rows], case["weights"][rows])
            loss.backward()
            steps.append(dict(loss=loss.detach(), embedding_grad=embeddings.grad / world_size,
                              centre_grad=pfc.weight.grad.clone(), state=head_state(head)))
        results[name] = steps
    return results


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    if expected.dtype == torch.uint8:
        assert torch.equal(actual, expected), what
        return
    scale = max(expected.abs().max().item(), 1e-3)
    error = (actual - expected).abs().max().item()
    assert error <= 1e-5 * scale, f"{what}: max error {error:.3g} against a scale {scale:.3g}"


@pytest.fixture(scope="module")
def one_process():
    case = make_case()
    return case, run_heads(0, 1, case)


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_head_is_the_same_on_any_number_of_processes(one_process, world_size):
    case, expected = one_process
    per_rank = run_distributed(run_heads, world_size, case)
    for name in NAMES:
        for step, reference in enumerate(expected[name]):
            results = [ranks[name][step] for ranks in per_rank]
            what = f"{name} step {step + 1}, {world_size} processes"
            for result in results:
                assert_close(result["loss"], reference["loss"], f"{what}: loss")
                for key, value in reference["state"].items():
                    assert_close(result["state"][key], value, f"{what}: state {key}")
            assert_close(torch.cat([r["embedding_grad"] for r in results]), reference["embedding_grad"],
                         f"{what}: d/d embeddings")
            assert_close(torch.cat([r["centre_grad"] for r in results]), reference["centre_grad"],
                         f"{what}: d/d centres")


@pytest.mark.parametrize("name", NAMES)
def test_every_head_with_sample_rate_half_equals_it_on_the_sampled_columns(name):
    """Two steps at sample_rate 0.5 against the same head (its own object, so its state evolves alone) on
    a PartialFC holding only the sampled centres; UniFace's bias starts at the sampled run's log(C·r·10)."""
    case = make_case()
    sampled_pfc = PartialFC(losses.get_margin_loss(name, seed=3), EMBEDDING_SIZE, NUM_CLASSES, sample_rate=0.5,
                            seed=SEED, generator=torch.Generator().manual_seed(4))
    alone_head = (losses.UniFaceLoss(bias_init=sampled_pfc.margin_loss.bias.item()) if name == "uniface"
                  else losses.get_margin_loss(name, seed=3))
    record = record_sampling(sampled_pfc)
    for number, (embeddings, labels) in enumerate(zip(case["embeddings"], case["labels"])):
        labels = labels % 4 + 3  # at most 4 positives: sampling keeps them and draws 1 or more of 6 negatives
        loss, embedding_grad, centre_grad = step(sampled_pfc, embeddings, labels, case["weights"])
        index = record[-1].index  # [S], sorted
        assert index.numel() == 5 and torch.isin(labels, index).all()
        alone = PartialFC(alone_head, EMBEDDING_SIZE, index.numel())
        with torch.no_grad():
            alone.weight.copy_(sampled_pfc.weight[index])
        expected = step(alone, embeddings, torch.searchsorted(index, labels), case["weights"])
        what = f"{name} step {number + 1}"
        assert_close(loss, expected[0], f"{what}: loss")
        assert_close(embedding_grad, expected[1], f"{what}: d/d embeddings")
        assert_close(centre_grad[index], expected[2], f"{what}: d/d sampled centres")
        assert centre_grad.abs().sum(dim=1).count_nonzero() <= index.numel()
        for key, value in head_state(alone_head).items():
            assert_close(head_state(sampled_pfc.margin_loss)[key], value, f"{what}: state {key}")


@pytest.mark.parametrize("name", NAMES)
def test_every_head_under_bf16_autocast_keeps_its_math_in_float32(name):
    """Only the cosine product runs in bf16: the loss stays within bf16's rounding of the cosines."""
    case = make_case()
    results = []
    for autocast in (False, True):
        pfc = PartialFC(losses.get_margin_loss(name, seed=3), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results.append(step(pfc, case["embeddings"][0], case["labels"][0], case["weights"]))
    (loss, _, _), (loss_bf16, embedding_grad_bf16, _) = results
    assert loss_bf16.dtype == torch.float32 and embedding_grad_bf16.dtype == torch.float32
    assert abs(loss_bf16 - loss) <= 0.05 * abs(loss) + 0.05
    assert torch.isfinite(embedding_grad_bf16).all()


def record_sampling(pfc: PartialFC) -> list:
    """Make `pfc` record the SampledCentres of each forward; returns the list they are appended to."""
    record = []
    sample_centres = pfc.sample_centres

    def recorded(labels):
        record.append(sample_centres(labels))
        return record[-1]

    pfc.sample_centres = recorded
    return record


def step(pfc, embeddings, labels, weights):
    """(loss, d/d embeddings, d/d centres) of one forward and backward."""
    embeddings = embeddings.clone().requires_grad_(True)
    pfc.zero_grad()
    loss = pfc(embeddings, labels, weights)
    loss.backward()
    return loss.detach(), embeddings.grad, pfc.weight.grad.clone()


def run_sampled_heads(rank: int, world_size: int, case: dict) -> dict:
    """One step of every head at sample_rate 0.5: loss, gradients, state and the classes sampled here."""
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    labels = case["labels"][0][rows] % 4 + 3  # classes 3-6: positives on both of 2 ranks
    results = {}
    for name in NAMES:
        pfc = PartialFC(losses.get_margin_loss(name, seed=3), EMBEDDING_SIZE, NUM_CLASSES, sample_rate=0.5,
                        seed=SEED, generator=torch.Generator().manual_seed(4 + rank))
        record = record_sampling(pfc)
        loss, embedding_grad, centre_grad = step(pfc, case["embeddings"][0][rows], labels, case["weights"][rows])
        index = record[0].index  # [S] rows of this shard
        results[name] = dict(loss=loss, embedding_grad=embedding_grad / world_size, centre_grad=centre_grad[index],
                             classes=index + pfc.class_start, state=head_state(pfc.margin_loss),
                             bias=pfc.margin_loss.bias.item() if name == "uniface" else None)
    return results


@pytest.mark.slow
def test_every_head_sampled_on_two_processes_equals_one_process_on_the_sampled_classes():
    """Each rank samples its own negatives; the loss, gradients and state are those of one process
    holding just the union of the sampled classes."""
    case = make_case()
    per_rank = run_distributed(run_sampled_heads, 2, case)
    full_weight = init_class_centres(NUM_CLASSES, EMBEDDING_SIZE, 0, NUM_CLASSES, seed=SEED)
    labels = case["labels"][0] % 4 + 3
    for name in NAMES:
        results = [ranks[name] for ranks in per_rank]
        classes = torch.cat([r["classes"] for r in results])  # sorted: rank 0's classes come first
        head = losses.UniFaceLoss(bias_init=results[0]["bias"]) if name == "uniface" else \
            losses.get_margin_loss(name, seed=3)
        alone = PartialFC(head, EMBEDDING_SIZE, classes.numel())
        with torch.no_grad():
            alone.weight.copy_(full_weight[classes])
        loss, embedding_grad, centre_grad = step(alone, case["embeddings"][0], torch.searchsorted(classes, labels),
                                                 case["weights"])
        for result in results:
            assert_close(result["loss"], loss, f"{name}: loss")
            for key, value in head_state(head).items():
                assert_close(result["state"][key], value, f"{name}: state {key}")
        assert_close(torch.cat([r["embedding_grad"] for r in results]), embedding_grad, f"{name}: d/d embeddings")
        assert_close(torch.cat([r["centre_grad"] for r in results]), centre_grad, f"{name}: d/d centres")


def test_magface_sample_weights_multiply_the_regulariser_too():
    """L = (1/N) Σ w_n (CE_n + λ_g g(a_n)); each row's loss alone is its one-row batch's loss."""
    case = make_case()
    pfc = PartialFC(losses.get_margin_loss("magface"), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
    embeddings, labels, weights = case["embeddings"][0], case["labels"][0], case["weights"]
    per_sample = torch.stack([pfc(embeddings[n:n + 1], labels[n:n + 1]).detach() for n in range(GLOBAL_BATCH)])
    assert_close(pfc(embeddings, labels, weights).detach(), (weights * per_sample).mean(), "weighted loss")


RESHARDED = ("adaface", "curricularface", "elasticface_arc_plus", "uniface")


def train_and_save(rank: int, world_size: int, case: dict) -> dict:
    """{loss: (head state_dict, SGD-with-momentum state_dict)} after two steps of this rank's rows."""
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    saved = {}
    for name in RESHARDED:
        pfc = PartialFC(losses.get_margin_loss(name, seed=3), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
        optimizer = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9)
        for embeddings, labels in zip(case["embeddings"], case["labels"]):
            optimizer.zero_grad()
            pfc(embeddings[rows], labels[rows], case["weights"][rows]).backward()
            optimizer.step()
        saved[name] = (pfc.state_dict(), optimizer.state_dict())
    return saved


@pytest.mark.slow
def test_resharding_two_saved_ranks_into_one_keeps_the_head_state_and_the_bias_momentum():
    """load_resharded takes the head's replicated state from the first shard it reads (here rank 1's): the
    statistics, ElasticFace's generator, UniFace's bias and the bias's momentum are those of one process."""
    case = make_case()
    single = train_and_save(0, 1, case)
    per_rank = run_distributed(train_and_save, 2, case)
    for name in RESHARDED:
        pfc = PartialFC(losses.get_margin_loss(name, seed=3), EMBEDDING_SIZE, NUM_CLASSES, seed=SEED)
        optimizer = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9)
        pfc.load_resharded(iter([per_rank[1][name], per_rank[0][name]]), optimizer)
        expected_head, expected_optimizer = single[name]
        for key, value in expected_head.items():
            if key == "margin_loss._extra_state":
                assert torch.equal(pfc.state_dict()[key]["generator_state"], value["generator_state"]), name
            elif torch.is_tensor(value):
                assert_close(pfc.state_dict()[key], value, f"{name}: {key}")
        for index, state in expected_optimizer["state"].items():
            assert_close(optimizer.state_dict()["state"][index]["momentum_buffer"], state["momentum_buffer"],
                         f"{name}: momentum of parameter {index}")
