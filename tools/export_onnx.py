"""Export a trained backbone to ONNX with one output, the embedding, and check it against PyTorch.

The graph has one input, "data": float32 NCHW [B, 3, 112, 112], RGB, (pixel / 255 - 0.5) / 0.5 so in
[-1, 1] (named like the input of insightface's MXNet-era ArcFace models), and one output, "embedding":
float32 [B, D], not L2-normalised. B is 1 unless --dynamic-batch. After export, ONNX Runtime and PyTorch
embed the same random inputs (batch 1 and 3 with --dynamic-batch) and the --image files; the export fails
with exit status 1, writing nothing, when both the max absolute difference and the max relative
difference (over the largest reference magnitude) exceed --tolerance.

Uses the TorchScript-based exporter (`dynamo=False`): the torch.export-based one needs onnxscript, which
is not a dependency. Attention goes through scaled_dot_product_attention, which that exporter lowers to
MatMul and Softmax from opset 14.

    python -m tools.export_onnx --network vit_s_dp005_mask_0 --weights model.pt --output model.onnx \\
        --dynamic-batch --image face1.jpg face2.jpg
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backbones import load_backbone
from tools.inference import load_face, to_input
from utils.errors import UserError, entry_point
from utils.files import atomic_write_bytes
from utils.images import IMAGE_SIZE

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
MIN_OPSET = 14  # first opset with an ONNX lowering of scaled_dot_product_attention
MAX_OPSET = 20  # last opset of the TorchScript-based exporter's full support
DYNAMIC_BATCH_SIZES = (1, 3)
PARITY_SEED = 0


def export(model: nn.Module, path: Path, opset: int, dynamic_batch: bool) -> None:
    """Trace the eval-mode `model` on CPU and write an ONNX graph "data" -> "embedding" to `path`."""
    example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The tracer warns that Python-level checks (input size, with_patch_info) become constants, as
        # they should, and the exporter that it is the TorchScript-based one, the choice made above.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)


def import_onnxsim():
    try:
        import onnxsim
    except ImportError as exc:
        raise UserError("--simplify needs onnxsim, which is not installed; run `pip install onnxsim` or "
                        "export without --simplify.") from exc
    return onnxsim


def simplify(path: Path) -> None:
    """Rewrite the ONNX file at `path` with onnxsim (constant folding, redundant-node removal)."""
    import onnx

    simplified, ok = import_onnxsim().simplify(onnx.load(str(path)))
    if not ok:
        raise UserError(f"onnxsim could not validate the simplified graph of '{path}'; export without "
                        "--simplify.")
    onnx.save(simplified, str(path))


def check_graph(path: Path) -> None:
    """The exported file is valid ONNX with one input named INPUT_NAME and one output named OUTPUT_NAME."""
    import onnx

    graph_model = onnx.load(str(path))
    onnx.checker.check_model(graph_model)
    inputs = [value.name for value in graph_model.graph.input]
    outputs = [value.name for value in graph_model.graph.output]
    assert inputs == [INPUT_NAME] and outputs == [OUTPUT_NAME], (inputs, outputs)


def parity_inputs(dynamic_batch: bool, image_paths: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """Named network inputs [B, 3, 112, 112] to compare on: random ones, then the aligned images."""
    rng = np.random.default_rng(PARITY_SEED)
    sizes = DYNAMIC_BATCH_SIZES if dynamic_batch else (1,)
    shape = (3, IMAGE_SIZE, IMAGE_SIZE)
    inputs = [(f"random batch {size}", rng.uniform(-1, 1, (size, *shape)).astype(np.float32))
              for size in sizes]
    if image_paths:
        images = to_input(np.stack([load_face(path) for path in image_paths]))  # [I, 3, H, W]
        if dynamic_batch:
            inputs.append((f"{len(image_paths)} images", images))
        else:
            inputs += [(f"image {path}", image[None]) for path, image in zip(image_paths, images)]
    return inputs


def embedding_differences(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max |candidate - reference|, that over max |reference|) for embeddings [B, D]."""
    max_abs = float(np.abs(candidate.astype(np.float64) - reference).max())
    return max_abs, max_abs / max(float(np.abs(reference).max()), np.finfo(np.float32).tiny)


def check_parity(model: nn.Module, path: Path, inputs: Sequence[tuple[str, np.ndarray]],
                 tolerance: float) -> list[str]:
    """Run ONNX Runtime and PyTorch on `inputs`, print the differences, return the failures."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    failures = []
    for label, batch in inputs:
        with torch.inference_mode():
            reference = model(torch.from_numpy(batch)).numpy()
        candidate = session.run(None, {INPUT_NAME: batch})[0]
        max_abs, max_rel = embedding_differences(reference, candidate)
        passed = candidate.shape == reference.shape and min(max_abs, max_rel) <= tolerance
        print(f"  {label}: output {list(candidate.shape)}, max abs diff {max_abs:.3e}, "
              f"max rel diff {max_rel:.3e} {'ok' if passed else 'FAIL'}")
        if not passed:
            failures.append(label)
    return failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.export_onnx", description=__doc__.split("\n")[0])
    parser.add_argument("--network", required=True, help="backbone name, for example vit_s_dp005_mask_0")
    parser.add_argument("--weights", required=True, help="backbone state_dict (.pt)")
    parser.add_argument("--output", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    parser.add_argument("--dynamic-batch", action="store_true", help="make the batch axis dynamic")
    parser.add_argument("--simplify", action="store_true", help="simplify the graph with onnxsim")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed max abs or relative difference of ONNX vs PyTorch embeddings")
    parser.add_argument("--image", nargs="+", default=[], metavar="FACE",
                        help="aligned 112x112 face images to compare on, besides random inputs")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    with tempfile.TemporaryDirectory(prefix="export_onnx_") as scratch:
        partial = Path(scratch) / output.name
        if not MIN_OPSET <= args.opset <= MAX_OPSET:
            raise UserError(f"--opset {args.opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET} "
                            "(attention needs at least 14).")
        if args.tolerance <= 0:
            raise UserError(f"--tolerance must be positive, got {args.tolerance}.")
        if args.simplify:
            import_onnxsim()
        model = load_backbone(args.network, args.weights).eval()
        inputs = parity_inputs(args.dynamic_batch, args.image)
        output.parent.mkdir(parents=True, exist_ok=True)
        print(f"exporting {args.network} with the TorchScript-based exporter (dynamo=False), opset {args.opset}")
        export(model, partial, args.opset, args.dynamic_batch)
        if args.simplify:
            simplify(partial)
        check_graph(partial)
        print(f"ONNX Runtime vs PyTorch (tolerance {args.tolerance:g}):")
        failures = check_parity(model, partial, inputs, args.tolerance)
        if failures:
            print(f"error: ONNX Runtime and PyTorch embeddings differ by more than {args.tolerance:g} on "
                  f"{', '.join(failures)}; '{output}' was not written.", file=sys.stderr)
            return 1
        atomic_write_bytes(output, partial.read_bytes(), checksum=True)
    batch = "batch" if args.dynamic_batch else "1"
    print(f"wrote {output}: input '{INPUT_NAME}' [{batch}, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] float32 RGB in "
          f"[-1, 1], output '{OUTPUT_NAME}' [{batch}, {model.num_features}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
