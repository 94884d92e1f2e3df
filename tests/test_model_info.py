"""Model summary: parameter, MAC and activation counts against hand counts; the network table (docs/using_models.md)."""

import pytest
import torch
from torch import nn

from backbones import RELEASED_AS, VARIANTS, IResNet, Variant, VisionTransformer, get_model
from tools import model_info

NUM_PATCHES = 144  # 12 x 12 patches of 9 pixels in a 112x112 image
PATCH_SIZE = 9


def tiny_vit(device: str = "cpu", attn_impl: str = "sdpa") -> VisionTransformer:
    with torch.device(device):
        return VisionTransformer(num_features=8, embed_dim=16, depth=1, num_heads=2, attn_impl=attn_impl)


def hand_parameter_count(width: int, num_features: int, depth: int) -> tuple[int, int]:
    """(parameters, buffer elements) of the TransFace ViT, layer by layer."""
    n, d, f = NUM_PATCHES, width, num_features
    patch_embed = 3 * PATCH_SIZE**2 * d + d
    embeddings = n * d + d  # pos_embed, mask_token
    block = (2 * d  # norm1
             + 3 * d * d  # qkv, no bias
             + d * d + d  # proj
             + 2 * d  # norm2
             + d * 4 * d + 4 * d  # fc1
             + 4 * d * d + d)  # fc2
    final_norm = 2 * d
    senet = n * d * n + n * n  # two linears without bias
    feature = n * d * d + 2 * d + d * f + 2 * f  # linear, BN, linear, BN
    buffers = (2 * d + 1) + (2 * f + 1)  # running mean, var, num_batches_tracked of each BN
    return patch_embed + embeddings + depth * block + final_norm + senet + feature, buffers


def hand_mac_count(width: int, num_features: int, depth: int) -> int:
    """Multiply-accumulates of one image: convolution, every linear, and attention's QK^T and AV."""
    n, d, f = NUM_PATCHES, width, num_features
    patch_embed = n * d * 3 * PATCH_SIZE**2
    linears = n * (3 * d * d + d * d + 4 * d * d + 4 * d * d)  # qkv, proj, fc1, fc2 on every token
    attention = 2 * n * n * d  # QK^T: n x n scores of d/h products per head; AV the same
    senet = n * d * n + n * n
    feature = n * d * d + d * f
    return patch_embed + depth * (linears + attention) + senet + feature


def test_parameters_and_buffers_match_a_hand_count():
    assert model_info.count_parameters(tiny_vit("meta")) == hand_parameter_count(16, 8, 1)
    with torch.device("meta"):
        released = get_model("vit_s_dp005_mask_0", num_features=512)
    assert model_info.count_parameters(released) == hand_parameter_count(512, 512, 12)


@pytest.mark.parametrize(("device", "attn_impl"), [("cpu", "sdpa"), ("cpu", "explicit"), ("meta", "sdpa")])
def test_macs_match_a_hand_count_including_attention_matmuls(device, attn_impl):
    """On CPU, SDPA runs a fused kernel that torch's flop counter has no formula for (regression guard)."""
    assert model_info.count_macs(tiny_vit(device, attn_impl)) == hand_mac_count(16, 8, 1)


def test_released_vit_t_macs_match_the_hand_count():
    with torch.device("meta"):
        model = get_model("vit_t")
    assert model_info.count_macs(model) == hand_mac_count(256, 512, 12)


def hand_iresnet_mac_count(layers: tuple[int, ...], num_features: int = 512) -> int:
    """Multiply-accumulates of an IResNet: 3x3 convolutions (the block's second one strided), the 1x1
    strided shortcut of each stage's first block, and the fc layer on the flattened 7x7 map."""
    side, in_chs = 112, 64
    macs = side * side * 3 * 9 * 64  # stem
    for width, num_blocks in zip((64, 128, 256, 512), layers):
        for index in range(num_blocks):
            macs += side * side * 9 * in_chs * width  # first 3x3, stride 1
            if index == 0:
                side //= 2
                macs += side * side * in_chs * width  # 1x1 shortcut, stride 2
            macs += side * side * 9 * width * width  # second 3x3 (stride 2 in the first block)
            in_chs = width
    return macs + 512 * 7 * 7 * num_features


@pytest.mark.parametrize(("name", "layers"), [("r18", (2, 2, 2, 2)), ("r100", (3, 13, 30, 3))])
def test_iresnet_macs_match_a_hand_count(name, layers):
    with torch.device("meta"):
        model = get_model(name)
    assert model_info.count_macs(model) == hand_iresnet_mac_count(layers)


def test_iresnet_activation_extrapolated_per_stage_equals_the_full_measurement(monkeypatch):
    """On an IResNet with three blocks in its second stage (cheaper than r18, same code path)."""
    monkeypatch.setitem(VARIANTS, "r_test", Variant(IResNet, dict(layers=(1, 3, 1, 1))))
    with torch.device("meta"):
        model = get_model("r_test")
    measured = model_info.activation_bytes_per_image(model.to_empty(device="cpu"), "fp32")
    assert model_info.network_activation_bytes_per_image("r_test", "fp32") == measured


def test_saved_tensor_bytes_per_image_match_a_hand_count():
    """A linear layer saves its input for the weight gradient, ReLU its output; the weight itself is
    the same at every batch size and drops out."""
    num_inputs, num_outputs = 3 * 112 * 112, 4
    model = nn.Sequential(nn.Flatten(), nn.Linear(num_inputs, num_outputs), nn.ReLU())
    assert model_info.activation_bytes_per_image(model, "fp32") == 4 * (num_inputs + num_outputs)


def test_activation_extrapolated_from_two_depths_equals_the_full_measurement():
    with torch.device("meta"):
        model = get_model("vit_micro", using_checkpoint=False)
    measured = model_info.activation_bytes_per_image(model.to_empty(device="cpu"), "fp32")
    assert model_info.network_activation_bytes_per_image("vit_micro", "fp32") == measured


def test_markdown_table_lists_every_network_with_its_release_name(capsys):
    assert model_info.main(["--all", "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| network | width | depth | heads | params (M) | GFLOPs | released as |"
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    assert list(rows) == list(VARIANTS)
    assert rows["vit_s_dp005_mask_0"] == "| vit_s_dp005_mask_0 | 512 | 12 | 8 | 86.7 | 5.76 | TransFace-S |"
    for name, released in RELEASED_AS.items():
        assert rows[name].endswith(f"| {released} |")
    # CNNs: last feature-map width, main-path weight layers (the 100 of r100), no heads.
    assert rows["r100"] == "| r100 | 512 | 100 | - | 65.2 | 12.09 |  |"
    assert rows["mbf"].startswith("| mbf | 256 | 50 | - | 2.1 | 0.44 |")
    # insightface's arcface_torch lists ViT-T/S/B/L at 1.5, 5.7, 11.4 and 25.3 GFLOPs (MACs).
    published = {"vit_t": 1.5, "vit_s_dp005_mask_0": 5.7, "vit_b_dp005_mask_005": 11.4,
                 "vit_l_dp005_mask_005": 25.3}
    for name, gflops in published.items():
        assert float(rows[name].split(" | ")[5]) == pytest.approx(gflops, abs=0.06)


def test_single_network_table_has_activation_memory(capsys):
    assert model_info.main(["--network", "vit_nano", "--batch-size", "64", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "act. GiB (B=64, fp32)" in out and out.splitlines()[1].startswith("vit_nano")


@pytest.mark.parametrize("argv", [[], ["--all", "--network", "vit_t"], ["--network", "vit_x"]])
def test_user_mistakes_exit_2(argv, capsys):
    assert model_info.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")
