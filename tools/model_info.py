"""Size and cost of the registered networks: parameters, buffers, GFLOPs and training activation memory.

Width and depth are the token width and number of blocks of a ViT, and the channels of the last feature
map and the number of weight layers on the main path of a CNN (100 for r100, 198 for r200; shortcut
convolutions are not counted); CNNs have no heads.
GFLOPs here are multiply-accumulates (MACs) of one 112x112 image, in units of 1e9, as in the "FLOPs"
of face-recognition papers and insightface's model tables (ViT-T 1.5, ViT-S 5.7, ViT-B 11.4, ViT-L 25.3);
the floating-point operation count is twice that. They are counted by torch.utils.flop_counter on a
meta-device forward: every convolution and linear layer and the two attention matmuls QK^T and AV
(scaled_dot_product_attention included); normalisation, softmax and activations are not counted.

Activation memory is the bytes autograd saves for the backward pass of a training-mode forward
(dropout of paths and token masking as configured, no gradient checkpointing), measured on CPU with
saved-tensor hooks under autocast to --precision. It is the difference between batches of 4 and 2
images (so parameters and their autocast copies drop out). For a ViT it is measured at depth 1 and 2,
for an IResNet with one block per stage and with one more block in each stage in turn, and extrapolated
over the identical blocks, which is exact and keeps the big networks quick; a MobileFaceNet is measured
whole.

    python -m tools.model_info --network vit_s_dp005_mask_0 --batch-size 128
    python -m tools.model_info --all --markdown
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import sys
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from backbones import RELEASED_AS, VARIANTS, IResNet, MobileFaceNet, VisionTransformer, get_model
from utils.errors import UserError, entry_point
from utils.images import IMAGE_SIZE
from utils.precision import PRECISIONS, autocast

MEASURE_BATCH_SIZES = (2, 4)  # BatchNorm1d needs more than one sample in training mode


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the fused CPU attention kernel, which flop_counter has no formula for."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(number of parameter elements, number of buffer elements, e.g. BatchNorm running statistics)."""
    num_params = sum(param.numel() for param in model.parameters())
    num_buffers = sum(buffer.numel() for buffer in model.buffers())
    return num_params, num_buffers


def count_macs(model: nn.Module, image_size: int = IMAGE_SIZE) -> int:
    """Multiply-accumulates of one eval-mode forward of a single image, on the model's device."""
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with counter, torch.no_grad():
        model.eval()(image)
    return counter.get_total_flops() // 2  # every counted op is a sum of products: 2 FLOPs per MAC


class ActivationProfile(NamedTuple):
    """Saved-tensor bytes of a training-mode forward, per image.

    saved: everything autograd saves (no gradient checkpointing); in_units: the part saved inside the
    units that gradient checkpointing recomputes (ViT blocks, IResNet blocks, MobileFaceNet units);
    unit_inputs: the inputs of those units, which checkpointing keeps instead; largest_unit: the most one
    unit saves, recomputed one unit at a time in the backward pass.
    """

    saved: float
    in_units: float
    unit_inputs: float
    largest_unit: float

    @property
    def checkpointed(self) -> float:
        """Bytes held with gradient checkpointing: the rest, every unit's input and one unit recomputed."""
        return self.saved - self.in_units + self.unit_inputs + self.largest_unit


def checkpoint_units(model: nn.Module) -> list[nn.Module]:
    """The modules a backbone runs under torch.utils.checkpoint when using_checkpoint is on (none for a
    module that is not a registered architecture)."""
    if isinstance(model, VisionTransformer):
        return list(model.blocks)
    if isinstance(model, IResNet):
        return [block for stage in model.stages() for block in stage]
    if isinstance(model, MobileFaceNet):
        return list(model._units())
    return []


def saved_tensor_profile(model: nn.Module, batch_size: int, precision: str = "fp32") -> ActivationProfile:
    """Bytes (not per image) of the distinct storages autograd saves in one training-mode forward of
    `batch_size` images, with the share saved inside the checkpoint units and the units' inputs."""
    storage_bytes, unit_of_storage, input_bytes = {}, {}, []
    current = [None]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in storage_bytes:  # views of one storage count once, where first saved
            storage_bytes[storage.data_ptr()] = storage.nbytes()
            unit_of_storage[storage.data_ptr()] = current[0]
        return tensor

    def enter(unit, args):
        current[0] = unit
        input_bytes.append(args[0].numel() * args[0].element_size())

    units = checkpoint_units(model)
    handles = [unit.register_forward_pre_hook(enter) for unit in units]
    handles += [unit.register_forward_hook(lambda *_: current.__setitem__(0, None)) for unit in units]
    device = next(model.parameters()).device
    images = torch.zeros(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(device, precision):
            model.train()(images)
    finally:
        for handle in handles:
            handle.remove()
    per_unit = {}
    for pointer, nbytes in storage_bytes.items():
        if unit_of_storage[pointer] is not None:
            per_unit[id(unit_of_storage[pointer])] = per_unit.get(id(unit_of_storage[pointer]), 0) + nbytes
    return ActivationProfile(sum(storage_bytes.values()), sum(per_unit.values()), sum(input_bytes),
                             max(per_unit.values(), default=0))


def saved_tensor_bytes(model: nn.Module, batch_size: int, precision: str = "fp32") -> int:
    """Bytes of the distinct storages autograd saves in one training-mode forward of `batch_size` images."""
    return saved_tensor_profile(model, batch_size, precision).saved


def activation_profile_per_image(model: nn.Module, precision: str = "fp32") -> ActivationProfile:
    """Saved-tensor profile per image: the growth from the smaller to the larger measuring batch."""
    small, large = MEASURE_BATCH_SIZES
    grown = zip(saved_tensor_profile(model, large, precision), saved_tensor_profile(model, small, precision))
    return ActivationProfile(*((big - little) / (large - small) for big, little in grown))


def activation_bytes_per_image(model: nn.Module, precision: str = "fp32") -> float:
    """Saved-tensor bytes per image: the growth from the smaller to the larger measuring batch."""
    return activation_profile_per_image(model, precision).saved


def _measured(name: str, precision: str, **overrides) -> ActivationProfile:
    """Saved-tensor profile per image of `name` built with `overrides`, weights left uninitialised (only
    shapes matter)."""
    with torch.device("meta"):
        model = get_model(name, using_checkpoint=False, **overrides)
    return activation_profile_per_image(model.to_empty(device="cpu"), precision)


def _extrapolated(base: ActivationProfile, grown: Sequence[tuple[int, ActivationProfile]]) -> ActivationProfile:
    """`base` plus, for each (count, measured), count times the growth measured - base (saved, in_units,
    unit_inputs); the largest unit is the largest of any measured model's."""
    sums = [base.saved, base.in_units, base.unit_inputs]
    for count, measured in grown:
        sums = [total + count * (value - start) for total, value, start in zip(sums, measured, base)]
    return ActivationProfile(*sums, max([base.largest_unit, *(measured.largest_unit for _, measured in grown)]))


def _vit_activation(name: str, precision: str) -> ActivationProfile:
    """Every block saves the same tensors: depth 1 and 2 give the per-block bytes and the rest."""
    one, two = (_measured(name, precision, depth=depth) for depth in (1, 2))
    return _extrapolated(one, [(VARIANTS[name].args["depth"] - 1, two)])


def _iresnet_activation(name: str, precision: str) -> ActivationProfile:
    """The blocks after the first of a stage are identical: one block per stage, then one more in each
    stage in turn, give the per-block bytes of every stage."""
    layers = VARIANTS[name].args["layers"]
    base = _measured(name, precision, layers=(1, 1, 1, 1))
    grown = []
    for stage, num_blocks in enumerate(layers):
        if num_blocks > 1:
            more = tuple(2 if i == stage else 1 for i in range(len(layers)))
            grown.append((num_blocks - 1, _measured(name, precision, layers=more)))
    return _extrapolated(base, grown)


_ACTIVATION_BY_ARCHITECTURE = {
    VisionTransformer: _vit_activation,
    IResNet: _iresnet_activation,
    MobileFaceNet: lambda name, precision: _measured(name, precision),
}


def network_activation_profile(name: str, precision: str = "fp32") -> ActivationProfile:
    """Saved-tensor profile per image of network `name` (bytes with and without gradient checkpointing)."""
    return _ACTIVATION_BY_ARCHITECTURE[VARIANTS[name].architecture](name, precision)


def network_activation_bytes_per_image(name: str, precision: str = "fp32") -> float:
    """Saved-tensor bytes per image of network `name` without gradient checkpointing."""
    return network_activation_profile(name, precision).saved


def width_depth_heads(model: nn.Module) -> tuple[int, int, int | None]:
    """(token width, blocks, heads) of a ViT; (last feature-map channels, main-path weight layers, None)
    of a CNN."""
    if isinstance(model, VisionTransformer):
        return model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads
    shortcuts = {id(m) for name, m in model.named_modules() if "downsample" in name.split(".")}
    weight_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in shortcuts]
    feature_map = model.conv_sep.layers[0].in_channels if isinstance(model, MobileFaceNet) else model.bn2.num_features
    return feature_map, len(weight_layers), None


def describe(name: str, batch_size: int, precision: str, with_memory: bool = True) -> dict:
    """One row of the table for network `name`."""
    with torch.device("meta"):
        model = get_model(name)
    num_params, num_buffers = count_parameters(model)
    width, depth, heads = width_depth_heads(model)
    row = {
        "name": name,
        "width": width,
        "depth": depth,
        "heads": heads if heads is not None else "-",
        "params": num_params,
        "buffers": num_buffers,
        "gmacs": count_macs(model) / 1e9,
        "released_as": RELEASED_AS.get(name, ""),
    }
    if with_memory:
        row["activation_gib"] = network_activation_bytes_per_image(name, precision) * batch_size / 2**30
    return row


def format_table(rows: Sequence[dict], batch_size: int, precision: str) -> str:
    header = (f"{'network':<22} {'width':>5} {'depth':>5} {'heads':>5} {'params (M)':>10} {'buffers':>8} "
              f"{'GFLOPs (MACs)':>13} {f'act. GiB (B={batch_size}, {precision})':>24}")
    lines = [header]
    for row in rows:
        lines.append(f"{row['name']:<22} {row['width']:>5} {row['depth']:>5} {row['heads']:>5} "
                     f"{row['params'] / 1e6:>10.2f} {row['buffers']:>8} {row['gmacs']:>13.2f} "
                     f"{row['activation_gib']:>24.2f}")
    return "\n".join(lines)


def format_markdown(rows: Sequence[dict]) -> str:
    """The README's network table."""
    lines = ["| network | width | depth | heads | params (M) | GFLOPs | released as |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['width']} | {row['depth']} | {row['heads']} | "
                     f"{row['params'] / 1e6:.1f} | {row['gmacs']:.2f} | {row['released_as']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.model_info", description=__doc__.split("\n")[0])
    parser.add_argument("--network", help="a registered backbone name")
    parser.add_argument("--all", action="store_true", help="every registered network")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch for activation memory")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16",
                        help="autocast dtype of the activation-memory measurement (training default fp16)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README table (name, width, depth, heads, params, GFLOPs, released as)")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.network) == args.all:
        raise UserError("give either --network NAME or --all.")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    names = list(VARIANTS) if args.all else [args.network]
    rows = [describe(name, args.batch_size, args.precision, with_memory=not args.markdown)
            for name in names]
    if args.markdown:
        print(format_markdown(rows))
    else:
        print(format_table(rows, args.batch_size, args.precision))
        print("GFLOPs count multiply-accumulates per 112x112 image (x2 for floating-point operations); "
              "activation memory is saved tensors without gradient checkpointing.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
