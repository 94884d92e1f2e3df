"""Pictures of what a TransFace ViT looks at: its SE patch weights, the patches DPAP perturbs, one DPAP result.

One row per face, four panels: the aligned face; the SE-gate patch weights (the softmax over the 12x12 grid
of 9-pixel patches that `model(x, with_patch_info=True)` returns) as a heatmap over it; the K patches with
the largest weights, those DPAP perturbs (K from the config's `dpap_k`); and the face after one DPAP
perturbation of those patches (`dpap.perturb_chosen`, partners drawn from the faces given, seeded).

    python -m tools.visualize --network vit_nano --weights model.pt face.png --output attention.png
    python -m tools.visualize --network vit_s_dp005_mask_0 --weights model.pt photo.jpg --detect --output attention.png
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from backbones import load_backbone
from dpap import DPAP, dominant_patches, perturb_chosen
from eval.detect import align_largest, load_detector
from eval.guard import check_embeddings
from tools.inference import load_face
from utils.config import BASE_CONFIG, load_config
from utils.distributed import pick_device
from utils.errors import UserError, entry_point
from utils.files import atomic_write_bytes, make_folder
from utils.images import IMAGE_SIZE, PIXEL_MAX, normalize, to_pixels

PANEL_TITLES = ("aligned face", "SE patch weights", "top-{k} patches (DPAP)", "DPAP perturbed")
PANEL_INCHES = 2.0


def load_faces(args: argparse.Namespace) -> np.ndarray:
    """Aligned faces [F, 112, 112, 3] uint8 RGB: the largest detected face of each photo with --detect,
    else the images themselves (aligned 112x112 crops)."""
    if not args.detect:
        return np.stack([load_face(path) for path in args.images])
    detector = load_detector(args.detector_model, args.download_detector)
    return np.stack([align_largest(detector, path)[0] for path in args.images])


def load_vit(network: str, weights: str, device: torch.device) -> torch.nn.Module:
    model = load_backbone(network, weights)
    if not hasattr(model, "patch_weights"):
        raise UserError(f"network '{network}' has no SE patch gate; tools.visualize needs a TransFace ViT "
                        "(a vit_* network).")
    return model.eval().to(device)


@torch.no_grad()
def attention(model: torch.nn.Module, faces: np.ndarray, dpap: DPAP, device: torch.device,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(patch weights [F, N], dominant cells [F, K], DPAP-perturbed faces [F, 112, 112, 3] uint8 RGB).

    Every face is perturbed (DPAP's prob is for training batches); partner patches come from all `faces`.
    """
    pixels = torch.from_numpy(faces).permute(0, 3, 1, 2)  # [F, H, W, 3] -> [F, 3, H, W]
    x = normalize(pixels.to(device))  # [F, 3, H, W] in [-1, 1]
    info = model(x, with_patch_info=True)
    # the same non-finite guard as every evaluation: NaN weights would draw a blank map and exit 0
    check_embeddings(info.embedding.float().cpu().numpy(), source="the faces", describe=lambda row: f"face {row}",
                     unit="faces")
    patch_weights = info.patch_weights.float()  # [F, N]
    cells = dominant_patches(patch_weights, dpap.k)  # [F, K]
    everyone = torch.arange(len(faces), device=device)  # [F]
    perturbed = perturb_chosen(x, everyone, patch_weights, k=dpap.k, alpha=dpap.alpha, ratio=dpap.ratio,
                               patch_size=model.patch_size, quantize=dpap.quantize,
                               generator=generator)  # [F, 3, H, W]
    perturbed_pixels = to_pixels(perturbed).round().clamp(0, PIXEL_MAX).to(torch.uint8)
    return patch_weights.cpu(), cells.cpu(), perturbed_pixels.permute(0, 2, 3, 1).cpu().numpy()  # [F, H, W, 3]


def draw(faces: np.ndarray, patch_weights: torch.Tensor, cells: torch.Tensor, perturbed: np.ndarray,
         grid_size: int, patch_size: int, names: Sequence[str]) -> Figure:
    """The figure: one row of four panels per face (see the module docstring)."""
    num_faces, k = cells.shape
    figure = Figure(figsize=(4 * PANEL_INCHES, num_faces * PANEL_INCHES), layout="constrained")
    axes = figure.subplots(num_faces, 4, squeeze=False)
    span = grid_size * patch_size  # the grid covers the top-left span x span pixels
    for row, name in enumerate(names):
        heat = patch_weights[row].reshape(grid_size, grid_size).numpy()  # [N] -> [grid, grid], row-major
        panels = axes[row]
        for panel in panels:
            panel.imshow(faces[row])
            panel.set_axis_off()
        panels[1].imshow(heat, cmap="inferno", alpha=0.6, extent=(0, span, span, 0), interpolation="nearest")
        for cell in cells[row].tolist():
            corner = ((cell % grid_size) * patch_size - 0.5, (cell // grid_size) * patch_size - 0.5)
            panels[2].add_patch(Rectangle(corner, patch_size, patch_size, fill=False, edgecolor="lime",
                                          linewidth=1.2))
        panels[3].imshow(perturbed[row])
        panels[0].set_title(Path(name).name, fontsize=8)
        for panel, title in zip(panels[1:], PANEL_TITLES[1:]):
            panel.set_title(title.format(k=k), fontsize=8)
    return figure


def save_png(figure: Figure, path: str | Path, dpi: int) -> None:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--output '{path}' must end in .png.")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    make_folder(path.parent)
    atomic_write_bytes(path, buffer.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.visualize", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="aligned 112x112 faces, or photos with --detect")
    parser.add_argument("--network", required=True, help="a TransFace ViT name, for example vit_s_dp005_mask_0")
    parser.add_argument("--weights", required=True, help="backbone state_dict (.pt) for --network")
    parser.add_argument("--output", required=True, help="the picture to write (.png)")
    parser.add_argument("--config", default=str(BASE_CONFIG),
                        help="config whose dpap_k, dpap_alpha, dpap_ratio, dpap_quantize are used (default: base)")
    parser.add_argument("--detect", action="store_true", help="detect and align the largest face of each photo")
    parser.add_argument("--detector-model", metavar="PATH", help="YuNet ONNX file (see tools.inference)")
    parser.add_argument("--download-detector", action="store_true", help="download the YuNet model into the cache")
    parser.add_argument("--seed", type=int, default=0, help="seed of the DPAP draws (partners, mixing weights)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the picture")
    parser.add_argument("--device", help="PyTorch device (default: cuda if available, else cpu)")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dpap = DPAP.from_config(load_config(args.config))
    device = pick_device(0, args.device)
    model = load_vit(args.network, args.weights, device)
    faces = load_faces(args)
    generator = torch.Generator().manual_seed(args.seed)
    patch_weights, cells, perturbed = attention(model, faces, dpap, device, generator)
    grid_size = IMAGE_SIZE // model.patch_size
    figure = draw(faces, patch_weights, cells, perturbed, grid_size, model.patch_size, args.images)
    save_png(figure, args.output, args.dpi)
    print(f"wrote {args.output}: {len(faces)} faces, top-{dpap.k} patches of a {grid_size}x{grid_size} grid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
