"""The TransFace ViT: released keys and shapes, forward contract, attention equivalence, masking, init."""

import itertools
import math
from pathlib import Path

import pytest
import torch

from backbones import RELEASED_AS, VARIANTS, PatchInfo, VisionTransformer, get_model
from backbones.vit import Attention, explicit_attention
from tests.state_dict_reference import parse_state_dicts
from utils.errors import UserError

REFERENCE = Path(__file__).parent / "data" / "official_vit_state_dicts.txt"
SMALL = ["vit_nano", "vit_micro", "vit_mini"]


def expand_blocks(networks: dict[str, dict]) -> dict[str, dict]:
    """The reference lists block 0 only; repeat its keys for every block of the network's depth, in order."""
    for network in networks.values():
        depth = int(network["meta"]["depth"])
        network["shapes"] = {key.replace("blocks.0.", f"blocks.{i}."): dims
                             for key, dims in network["shapes"].items()
                             for i in (range(depth) if "blocks.0." in key else [0])}
    return networks


REFERENCE_NETWORKS = expand_blocks(parse_state_dicts(REFERENCE))


def test_reference_lists_every_released_network():
    released = [name for name, variant in VARIANTS.items()
                if variant.architecture is VisionTransformer and name not in SMALL]
    assert sorted(REFERENCE_NETWORKS) == sorted(released)
    assert set(RELEASED_AS) <= set(released)


@pytest.mark.parametrize("name", sorted(REFERENCE_NETWORKS))
def test_released_variant_matches_published_keys_shapes_and_hyper_parameters(name):
    reference = REFERENCE_NETWORKS[name]
    with torch.device("meta"):
        model = get_model(name)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == reference["shapes"]
    meta = reference["meta"]
    assert sum(p.numel() for p in model.parameters()) == int(meta["params"])
    assert model.mask_ratio == float(meta["mask_ratio"])
    assert model.using_checkpoint == (meta["using_checkpoint"] == "True")
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(float(meta["drop_path_max"]), abs=1e-7)
    assert model.blocks[0].attn.num_heads == int(meta["heads"]) and model.num_patches == 144


def test_drop_path_rises_linearly_from_zero():
    model = get_model("vit_micro")
    rates = [block.drop_path.drop_prob for block in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.05)
    steps = [b - a for a, b in itertools.pairwise(rates)]
    assert all(step == pytest.approx(steps[0]) for step in steps)


def test_unknown_network_lists_valid_names():
    with pytest.raises(UserError, match="vit_s_dp005_mask_0"):
        get_model("vit_xl")


def test_sdpa_attention_equals_explicit_softmax_attention_in_fp32():
    torch.manual_seed(0)
    sdpa = Attention(64, num_heads=8, attn_impl="sdpa")
    explicit = Attention(64, num_heads=8, attn_impl="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(3, 144, 64)
    torch.testing.assert_close(sdpa(x), explicit(x), atol=1e-5, rtol=1e-5)


def test_explicit_attention_matches_a_direct_formula():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    expected = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(8), dim=-1) @ v
    torch.testing.assert_close(explicit_attention(q, k, v, 8**-0.5), expected)


def test_whole_model_sdpa_equals_explicit():
    torch.manual_seed(0)
    sdpa = get_model("vit_nano").eval()
    explicit = get_model("vit_nano", attn_impl="explicit").eval()
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(sdpa(x), explicit(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("train", [True, False])
def test_forward_contract_shapes_and_patch_invariants(name, train):
    torch.manual_seed(0)
    model = get_model(name, num_features=96).train(train)
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    assert model(x).shape == (3, 96)
    info = model(x, with_patch_info=True)
    assert isinstance(info, PatchInfo)
    assert info.embedding.shape == (3, 96)
    assert info.patch_weights.shape == (3, 144) and info.patch_std.shape == (3, 144)
    torch.testing.assert_close(info.patch_weights.sum(dim=1), torch.ones(3))
    assert (info.patch_weights > 0).all() and (info.patch_std >= 0).all()
    assert torch.isfinite(info.embedding).all()


@pytest.mark.parametrize("name", SMALL)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = get_model(name, num_features=32).train()
    embedding, weights, std = model(torch.rand(4, 3, 112, 112), with_patch_info=True)
    (embedding.square().mean() + std.mean() + weights.square().sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and n != "mask_token"]
    assert not missing


def test_patch_std_is_unbiased_std_of_the_gated_tokens():
    torch.manual_seed(0)
    model = get_model("vit_nano").eval()
    x = torch.rand(2, 3, 112, 112)
    tokens = model.forward_features(x)
    gate = model.senet(tokens.flatten(1))
    gated = tokens * gate[..., None]
    mean = gated.mean(dim=2, keepdim=True)
    expected_std = ((gated - mean).square().sum(dim=2) / (gated.shape[2] - 1)).sqrt()
    info = model(x, with_patch_info=True)
    torch.testing.assert_close(info.patch_std, expected_std)
    torch.testing.assert_close(info.patch_weights, torch.softmax(gate, dim=1))
    torch.testing.assert_close(info.embedding, model.feature(gated.flatten(1)))


def test_patch_weights_equal_forward_weights_and_leave_batchnorm_untouched():
    torch.manual_seed(0)
    model = get_model("vit_nano").eval()
    x = torch.rand(2, 3, 112, 112)
    torch.testing.assert_close(model.patch_weights(x), model(x, with_patch_info=True).patch_weights)
    model.train()
    before = model.feature[1].running_mean.clone(), int(model.feature[1].num_batches_tracked)
    model.patch_weights(x)
    assert torch.equal(model.feature[1].running_mean, before[0])
    assert int(model.feature[1].num_batches_tracked) == before[1]


def test_masking_replaces_tokens_only_in_train_mode():
    torch.manual_seed(0)
    model = get_model("vit_nano", mask_ratio=0.25)
    with torch.no_grad():
        model.mask_token.fill_(7.0)
    x = torch.rand(2, 3, 112, 112)
    masked = (model.train().forward_features(x) == 7.0).all(dim=2)  # [B, N]
    assert masked.sum(dim=1).tolist() == [144 - int(144 * 0.75)] * 2
    assert masked[0].tolist() != masked[1].tolist()  # each sample draws its own mask
    assert not (model.eval().forward_features(x) == 7.0).all(dim=2).any()


def test_eval_forward_is_deterministic_and_train_forward_is_not():
    torch.manual_seed(0)
    model = get_model("vit_mini", drop_path_rate=0.3)
    x = torch.rand(2, 3, 112, 112)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = get_model("vit_nano").train()
    checkpointed = get_model("vit_nano", using_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(3, 3, 112, 112)
    for model in (plain, checkpointed):
        model(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_initialisation_follows_the_release():
    torch.manual_seed(0)
    model = get_model("vit_s")
    trunc = model.feature[0].weight
    # trunc_normal_(std=0.02) truncates at +-2 in absolute units, as in the release: effectively N(0, 0.02).
    assert trunc.std().item() == pytest.approx(0.02, rel=0.05) and abs(trunc.mean().item()) < 1e-3
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.count_nonzero(model.blocks[0].attn.proj.bias) == 0
    # SE layers keep PyTorch's default Linear init: uniform within 1/sqrt(fan_in), not std 0.02.
    bound = 1 / math.sqrt(model.senet[2].in_features)
    se = model.senet[2].weight
    assert se.abs().max() <= bound and se.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_bf16_autocast_forward_on_cpu():
    torch.manual_seed(0)
    model = get_model("vit_nano").eval()
    x = torch.rand(2, 3, 112, 112)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = model(x)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), model(x), atol=0.1, rtol=0.1)


def test_wrong_input_size_is_reported():
    with pytest.raises(ValueError, match="112x112"):
        get_model("vit_nano")(torch.rand(1, 3, 128, 128))
