"""Face embeddings for image files from a PyTorch checkpoint or an ONNX model: compare two faces, embed a folder.

Inputs are aligned 112x112 face crops, or images of any size with their 5 landmarks (left eye, right eye,
nose tip, left and right mouth corner, as (x, y) pixels), aligned here onto the ArcFace template by
`eval.align.align_face`. The network sees NCHW float32 RGB in [-1, 1].

    python -m tools.inference --network vit_s_dp005_mask_0 --weights model.pt --compare a.jpg b.jpg
    python -m tools.inference --onnx model.onnx --folder faces/ --output emb.npy --flip --normalize
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from backbones import load_backbone
from eval.align import align_face
from eval.guard import check_embeddings
from utils.decode import read_image, split_image_files, warn_skipped
from utils.distributed import pick_device
from utils.errors import UserError, entry_point
from utils.files import atomic_write, atomic_write_text, check_regular_file, make_folder, read_text
from utils.images import IMAGE_EXTENSIONS, IMAGE_SIZE, normalize

NUM_LANDMARK_VALUES = 10  # 5 points, (x, y) each

# float32 [B, 3, 112, 112] -> float32 [B, D]
Embedder = Callable[[np.ndarray], np.ndarray]


def parse_landmarks(text: str, source: str) -> np.ndarray:
    """Ten numbers x1,y1,...,x5,y5 separated by commas or spaces -> [5, 2] float32."""
    fields = [field for field in re.split(r"[,\s]+", text.strip()) if field]
    try:
        values = [float(field) for field in fields]
    except ValueError:
        values = []
    if len(values) != NUM_LANDMARK_VALUES:
        raise UserError(f"{source}: expected 10 numbers x1,y1,...,x5,y5 (eyes, nose, mouth corners), got "
                        f"'{text.strip()}'.")
    return np.array(values, dtype=np.float32).reshape(5, 2)  # [5, (x, y)]


def read_landmarks_file(path: str | Path, names: Sequence[str]) -> list[np.ndarray | None]:
    """Landmarks per image from a text file: one line per image in order (10 numbers), or lines
    `name x1 y1 ... x5 y5` matched by image name, where images without a line count as aligned."""
    path = Path(path)
    lines = [line.strip() for line in read_text(path, "landmarks file").splitlines() if line.strip()]
    rows = [re.split(r"[,\s]+", line) for line in lines]
    num_named = sum(len(fields) == NUM_LANDMARK_VALUES + 1 for fields in rows)
    if num_named == 0:
        if len(lines) != len(names):
            raise UserError(f"landmarks file '{path}' has {len(lines)} lines for {len(names)} images; give "
                            "one line per image in order, or start each line with the image name.")
        return [parse_landmarks(line, f"{path} line {n}") for n, line in enumerate(lines, start=1)]
    if num_named != len(lines):
        raise UserError(f"landmarks file '{path}' mixes lines with and without an image name; start every "
                        "line with the image name or none.")
    named = {fields[0]: parse_landmarks(" ".join(fields[1:]), f"{path} line {n}")
             for n, fields in enumerate(rows, start=1)}
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise UserError(f"landmarks file '{path}' names images that are not inputs: {', '.join(unknown[:5])}; "
                        "use the names as given on the command line or relative to --folder.")
    return [named.get(name) for name in names]


def load_face(path: str | Path, landmarks: np.ndarray | None = None) -> np.ndarray:
    """An aligned face, 112x112x3 uint8 RGB: the image itself, or its warp onto the template when
    `landmarks` [5, 2] are given."""
    image = read_image(path)  # [H, W, 3] RGB
    if landmarks is not None:
        image = align_face(image, landmarks, IMAGE_SIZE)
    elif image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        height, width = image.shape[:2]
        raise UserError(f"image '{path}' is {width}x{height}, not an aligned {IMAGE_SIZE}x{IMAGE_SIZE} face; "
                        "give its 5 landmarks with --landmarks or --landmarks-file to align it.")
    return image


def to_input(faces: np.ndarray) -> np.ndarray:
    """uint8 RGB faces [B, 112, 112, 3] -> network input float32 [B, 3, 112, 112] in [-1, 1]."""
    pixels = torch.from_numpy(faces).permute(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]
    return normalize(pixels).numpy()


def torch_embedder(model: torch.nn.Module, device: torch.device) -> Embedder:
    model = model.eval().to(device)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return run


def onnx_embedder(path: str | Path) -> Embedder:
    """ONNX Runtime on the first input; a graph with a fixed batch size gets padded chunks of it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model '{path}' does not exist; export one with python -m tools.export_onnx.")
    try:
        available = ort.get_available_providers()
        providers = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:
        raise UserError(f"'{path}' is not a loadable ONNX model ({type(exc).__name__}: {exc}).") from exc
    graph_input = session.get_inputs()[0]
    if list(graph_input.shape[1:]) != [3, IMAGE_SIZE, IMAGE_SIZE]:
        raise UserError(f"ONNX model '{path}' takes input of shape {graph_input.shape}; expected "
                        f"[batch, 3, {IMAGE_SIZE}, {IMAGE_SIZE}].")
    fixed_batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None

    def run(batch: np.ndarray) -> np.ndarray:
        if fixed_batch is None:
            return session.run(None, {graph_input.name: batch})[0]
        outputs = []
        for start in range(0, len(batch), fixed_batch):
            chunk = batch[start:start + fixed_batch]
            padding = np.zeros((fixed_batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            output = session.run(None, {graph_input.name: np.concatenate([chunk, padding])})[0]
            outputs.append(output[:len(chunk)])
        return np.concatenate(outputs)

    return run


def embed_faces(embedder: Embedder, faces: np.ndarray, flip: bool = False) -> np.ndarray:
    """Embeddings [B, D] of uint8 RGB faces [B, 112, 112, 3]; with `flip`, plus those of the mirrored faces."""
    batch = to_input(faces)  # [B, 3, H, W]
    embeddings = embedder(batch)
    if flip:
        embeddings = embeddings + embedder(np.ascontiguousarray(batch[..., ::-1]))  # mirror along W
    return embeddings


def embed_files(embedder: Embedder, paths: Sequence[Path], landmarks: Sequence[np.ndarray | None],
                batch_size: int = 64, flip: bool = False, normalize: bool = False) -> np.ndarray:
    """Embeddings [N, D] float32 of image files, read `batch_size` at a time; non-finite ones raise
    eval.guard.NonFiniteEmbeddings."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        faces = np.stack([load_face(path, points) for path, points in
                          zip(paths[start:start + batch_size], landmarks[start:start + batch_size])])
        chunks.append(embed_faces(embedder, faces, flip))
    embeddings = np.concatenate(chunks).astype(np.float32)
    check_embeddings(embeddings, source="the inputs", describe=lambda row: f"'{paths[row]}'")
    if normalize:
        embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder '{folder}' does not exist; pass a directory of face images.")
    paths, others = split_image_files(sorted(path for path in folder.rglob("*") if not path.is_dir()))
    warn_skipped(others, folder)
    for path in paths:
        check_regular_file(path, "image", f"remove it from '{folder}'")  # a FIFO named x.jpg would block
    if not paths:
        raise UserError(f"folder '{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return paths


def build_embedder(args: argparse.Namespace) -> Embedder:
    if args.onnx:
        if args.network or args.weights:
            raise UserError("give either --onnx or --network with --weights, not both.")
        return onnx_embedder(args.onnx)
    if not (args.network and args.weights):
        raise UserError("no model given; pass --network NAME --weights model.pt, or --onnx model.onnx.")
    device = pick_device(0, args.device)
    return torch_embedder(load_backbone(args.network, args.weights), device)


def collect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Image paths and their names (the path as given, or relative to --folder)."""
    modes = [bool(args.images), bool(args.compare), bool(args.folder)]
    if sum(modes) != 1:
        raise UserError("give exactly one of: image files, --compare A B, or --folder DIR.")
    if args.folder:
        paths = list_images(args.folder)
        return paths, [path.relative_to(args.folder).as_posix() for path in paths]
    given = args.compare or args.images
    return [Path(item) for item in given], list(given)


def collect_landmarks(args: argparse.Namespace, names: Sequence[str]) -> list[np.ndarray | None]:
    if args.landmarks and args.landmarks_file:
        raise UserError("give either --landmarks or --landmarks-file, not both.")
    if args.landmarks_file:
        return read_landmarks_file(args.landmarks_file, names)
    if not args.landmarks:
        return [None] * len(names)
    if len(args.landmarks) != len(names):
        raise UserError(f"--landmarks was given {len(args.landmarks)} times for {len(names)} images; give it "
                        "once per image, in order.")
    return [parse_landmarks(text, f"--landmarks for '{name}'") for text, name in zip(args.landmarks, names)]


def write_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str]) -> Path:
    """Save [N, D] embeddings to `path` (.npy) and the image names, one a line, beside it (.txt)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise UserError(f"--output '{path}' must end in .npy.")
    make_folder(path.parent)
    atomic_write(path, lambda stream: np.save(stream, embeddings))
    names_path = path.with_suffix(".txt")
    atomic_write_text(names_path, "".join(f"{name}\n" for name in names))
    return names_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.inference", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", help="image files: aligned 112x112 faces, or with landmarks")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print the cosine similarity of two faces")
    parser.add_argument("--folder", help="embed every image under this directory (recursively, sorted)")
    parser.add_argument("--network", help="backbone name, for example vit_s_dp005_mask_0")
    parser.add_argument("--weights", help="backbone state_dict (.pt) for --network")
    parser.add_argument("--onnx", help="ONNX model from tools.export_onnx, run with ONNX Runtime")
    parser.add_argument("--device", help="PyTorch device (default: cuda if available, else cpu)")
    parser.add_argument("--landmarks", action="append", metavar="X1,Y1,...,X5,Y5",
                        help="5 landmarks of one image, once per image in order; the image is aligned")
    parser.add_argument("--landmarks-file", help="one line of 10 numbers per image, or 'name x1 y1 ... y5'")
    parser.add_argument("--output", help="write embeddings [N, D] to this .npy and the names to a .txt beside it")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--flip", action="store_true", help="add the embedding of the mirrored face")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    paths, names = collect_inputs(args)
    landmarks = collect_landmarks(args, names)
    embedder = build_embedder(args)
    embeddings = embed_files(embedder, paths, landmarks, args.batch_size, args.flip, args.normalize)
    if args.compare:
        print(f"cosine similarity: {cosine_similarity(embeddings[0], embeddings[1]):.6f}")
    if args.output:
        names_path = write_embeddings(args.output, embeddings, names)
        print(f"wrote {args.output} {tuple(embeddings.shape)} and {names_path}")
    elif not args.compare:
        for name, embedding in zip(names, embeddings):
            print(f"{name}: {embedding.shape[0]}-d embedding, L2 norm {np.linalg.norm(embedding):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
