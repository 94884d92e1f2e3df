"""The released CNNs (IResNet, MobileFaceNet): published keys and shapes, forward contract, block maths,
BatchNorm in eval mode, fp32 head under autocast, gradient checkpointing, strict loading."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backbones import VARIANTS, IResNet, MobileFaceNet, get_model, has_patch_info, load_backbone, matching_networks
from backbones.iresnet import IBasicBlock
from backbones.mobilefacenet import DepthWise
from tests.state_dict_reference import parse_state_dicts
from utils.errors import UserError

REFERENCE = Path(__file__).parent / "data" / "official_cnn_state_dicts.txt"
CNNS = [name for name, variant in VARIANTS.items() if variant.architecture in (IResNet, MobileFaceNet)]
SMALL = ["r18", "mbf"]  # the only CNNs run forward in these tests: the others take seconds per image on CPU


REFERENCE_NETWORKS = parse_state_dicts(REFERENCE)


def images(batch_size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch_size, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def small_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: get_model(name) for name in SMALL}


def test_reference_lists_every_registered_cnn():
    """r2060 is in the released code base but deliberately not provided here (see the README)."""
    assert sorted(REFERENCE_NETWORKS) == sorted(CNNS)


@pytest.mark.parametrize("name", sorted(REFERENCE_NETWORKS))
def test_cnn_matches_published_keys_shapes_order_and_parameter_count(name):
    reference = REFERENCE_NETWORKS[name]
    with torch.device("meta"):
        model = get_model(name)
    state = model.state_dict()
    assert list(state) == list(reference["shapes"])  # order too, as torch.save writes it
    assert {key: tuple(value.shape) for key, value in state.items()} == reference["shapes"]
    assert sum(p.numel() for p in model.parameters()) == int(reference["meta"]["params"])
    assert len(state) == int(reference["meta"]["tensors"])
    assert not has_patch_info(name)


@pytest.mark.parametrize("name", SMALL)
def test_forward_gives_finite_embeddings_of_the_requested_size_in_train_and_eval(name):
    torch.manual_seed(0)
    model = get_model(name, num_features=96)
    for train in (True, False):
        embedding = model.train(train)(images(2))
        assert embedding.shape == (2, 96) and embedding.dtype == torch.float32
        assert torch.isfinite(embedding).all()


@pytest.mark.parametrize("name", SMALL)
def test_gradients_reach_every_trainable_parameter(name, small_models):
    """Through eval-mode BatchNorm, so that no bias is cancelled by a following batch normalisation."""
    model = small_models[name].eval()
    model.zero_grad(set_to_none=True)
    projection = torch.randn(512, generator=torch.Generator().manual_seed(1))
    (model(images(1)) @ projection).sum().backward()
    trainable = dict(model.named_parameters())
    no_gradient = [key for key, p in trainable.items()
                   if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_gradient == []
    assert all(torch.isfinite(p.grad).all() for p in trainable.values() if p.grad is not None)


def test_iresnet_embedding_batchnorm_scale_is_frozen_at_one_as_released():
    with torch.device("meta"):
        model = get_model("r100")
    frozen = [key for key, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["features.weight"]
    assert torch.equal(get_model("r18").features.weight, torch.ones(512))


@pytest.mark.parametrize("name", SMALL)
def test_eval_mode_leaves_batchnorm_statistics_unchanged(name, small_models):
    model = small_models[name].eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        model(images(3))
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


@pytest.mark.parametrize("name", SMALL)
def test_eval_embedding_of_an_image_does_not_depend_on_the_rest_of_the_batch(name, small_models):
    model = small_models[name].eval()
    batch = images(3)
    with torch.no_grad():
        together, alone = model(batch)[1:2], model(batch[1:2])
    # Randomly initialised networks give large embeddings (N(0, 0.1) convolutions): compare relative to them.
    assert (together - alone).abs().max() <= 1e-5 * alone.abs().max()


@pytest.mark.parametrize(("name", "channels"), [("r18", 512), ("mbf", 256)])
def test_head_runs_in_fp32_under_bf16_autocast_as_released(name, channels, small_models):
    """The head alone, on a bf16 feature map such as the body gives under autocast (a whole bf16 forward
    takes a minute on a CPU without bf16 instructions)."""
    model = small_models[name].eval()
    feature_map = torch.randn(2, channels, 7, 7, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embedding = model.forward_head(feature_map)
        in_fp32 = model.forward_head(feature_map.float())
    assert embedding.dtype == torch.float32
    torch.testing.assert_close(embedding, in_fp32)


def _rand_batchnorm_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random affine parameters and running statistics, so that the block maths is not hidden by 1 and 0."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5, generator=generator)
                bn.bias.normal_(generator=generator)
                bn.running_mean.normal_(generator=generator)
                bn.running_var.uniform_(0.5, 2.0, generator=generator)


def _bn(x: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = bn.weight / torch.sqrt(bn.running_var + 1e-5)
    return (x - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)


def test_iresnet_block_is_bn_conv_bn_prelu_strided_conv_bn_plus_projected_input():
    """The released block order (stride on the second convolution, 1x1 strided shortcut), written out."""
    generator = torch.Generator().manual_seed(0)
    block = IBasicBlock(8, 16, stride=2).eval()
    _rand_batchnorm_(block, generator)
    with torch.no_grad():
        block.prelu.weight.uniform_(0.0, 0.5, generator=generator)
    x = torch.randn(2, 8, 10, 10, generator=generator)
    out = _bn(F.conv2d(_bn(x, block.bn1), block.conv1.weight, padding=1), block.bn2)
    out = F.prelu(out, block.prelu.weight)
    out = _bn(F.conv2d(out, block.conv2.weight, stride=2, padding=1), block.bn3)
    shortcut = _bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])
    with torch.no_grad():
        torch.testing.assert_close(block(x), out + shortcut)


def test_mobilefacenet_residual_block_is_expand_depthwise_project_plus_input():
    generator = torch.Generator().manual_seed(0)
    block = DepthWise(8, 8, hidden=12, residual=True).eval()
    _rand_batchnorm_(block, generator)
    expand, depthwise, project = block.layers
    x = torch.randn(2, 8, 9, 9, generator=generator)
    out = F.prelu(_bn(F.conv2d(x, expand.layers[0].weight), expand.layers[1]), expand.layers[2].weight)
    out = F.conv2d(out, depthwise.layers[0].weight, padding=1, groups=12)
    out = F.prelu(_bn(out, depthwise.layers[1]), depthwise.layers[2].weight)
    out = _bn(F.conv2d(out, project.layers[0].weight), project.layers[1])
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + out)


def test_released_initialisation():
    """IResNet: convolutions N(0, 0.1); MobileFaceNet: Kaiming normal, fan-out, for convolutions and the
    linear layer."""
    torch.manual_seed(0)
    conv = get_model("r18").layer3[0].conv1.weight  # 256 x 128 x 3 x 3
    assert conv.std().item() == pytest.approx(0.1, rel=0.02) and abs(conv.mean().item()) < 2e-3
    model = get_model("mbf")
    pointwise = model.layers[2].layers[0].layers[0].weight  # 128 x 128 x 1 x 1, fan-out 128
    assert pointwise.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.05)
    linear = model.features.layers[2].weight  # 512 x 512, fan-out 512
    assert linear.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.02)


@pytest.mark.parametrize("name", SMALL)
def test_gradient_checkpointing_gives_the_same_gradients(name, small_models):
    reference = small_models[name]
    checkpointed = get_model(name, using_checkpoint=True)
    checkpointed.load_state_dict(reference.state_dict())
    x = images(1)
    grads = []
    for model in (reference, checkpointed):
        model.eval().zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        grads.append({key: p.grad for key, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], msg=key)


def test_mbf_saved_and_loaded_strictly_gives_identical_embeddings(tmp_path):
    torch.manual_seed(0)
    model = get_model("mbf", num_features=128).eval()
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)  # a plain state_dict, as insightface publishes them
    loaded = load_backbone("mbf", path).eval()
    assert loaded.num_features == 128  # read from the file
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_loading_a_cnn_file_as_another_network_names_the_one_that_fits(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save(get_model("mbf").state_dict(), path)
    with pytest.raises(UserError, match=r"does not match network 'mbf_large'.*--network mbf\."):
        load_backbone("mbf_large", path)
    with pytest.raises(UserError, match=r"does not match network 'vit_t'.*--network mbf\."):
        load_backbone("vit_t", path)


@pytest.mark.parametrize("name", ["r50", "r100"])
def test_matching_networks_recognises_a_published_iresnet_layout(name):
    with torch.device("meta"):
        state = get_model(name).state_dict()
    assert matching_networks(state) == [name]
