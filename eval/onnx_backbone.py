"""An ONNX model run by ONNX Runtime in place of a PyTorch backbone, for `eval_ijbc.py --onnx` and
`python -m eval.verification --onnx` (the released `onnx_ijbc.py` evaluates ONNX files the same way).

The model must take one float input [B, 3, 112, 112] (RGB in [-1, 1], as tools/export_onnx.py writes it) and
return the embedding [B, D]: its only output, or the output named `embedding` among several. Every run's
output is checked to be [B, D] for B inputs, D the same each time (eval.guard.check_model_output).
Images reach it through the same loader, batches and flip test as
a PyTorch backbone (eval.embed.embed_batch calls it like one). ONNX Runtime is imported only here, so it
stays optional: `pip install onnxruntime` (CPU) or `onnxruntime-gpu` (CUDA), whichever fits the machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eval.guard import check_model_output
from utils.errors import UserError
from utils.files import check_regular_file, check_weights_file
from utils.images import IMAGE_SIZE

INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError("--onnx needs ONNX Runtime, which is not installed; run `pip install onnxruntime` "
                        "(or onnxruntime-gpu for CUDA).") from exc
    return onnxruntime


class OnnxBackbone:
    """Callable like an eval-mode backbone: float [B, 3, 112, 112] tensor -> embedding [B, D] float32
    tensor on the input's device. A graph with a fixed batch size n gets its input in chunks of n, the
    last one zero-padded."""

    training = False

    def __init__(self, session, fixed_batch: int | None, source: str = "ONNX model"):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = embedding_output(session, source)
        self.fixed_batch = fixed_batch
        self.source = source
        self.width: int | None = None  # D, fixed by the first run

    def eval(self) -> OnnxBackbone:
        return self

    def train(self, mode: bool = True) -> OnnxBackbone:
        """Nothing to switch: an exported graph is in eval mode for good."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        embeddings = self.embed(x.detach().to("cpu", torch.float32).numpy())  # [B, D]
        return torch.from_numpy(embeddings).to(x.device)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings [B, D] float32 of network inputs [B, 3, 112, 112] float32."""
        if self.fixed_batch is None:
            return self._run(np.ascontiguousarray(batch, dtype=np.float32))
        chunks = []
        for start in range(0, len(batch), self.fixed_batch):
            chunk = batch[start:start + self.fixed_batch]  # [<= n, 3, H, W]
            padded = np.zeros((self.fixed_batch, *chunk.shape[1:]), dtype=np.float32)
            padded[:len(chunk)] = chunk
            chunks.append(self._run(padded)[:len(chunk)])
        return np.concatenate(chunks)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        output = self.session.run([self.output_name], {self.input_name: batch})[0]
        check_model_output(output, len(batch), source=self.source, width=self.width)
        self.width = output.shape[1]
        return np.asarray(output, dtype=np.float32)


def embedding_output(session, source: str) -> str:
    """The name of the session's embedding output: its only one, or the one named `embedding`; a
    UserError naming the outputs that exist otherwise, or when the output's declared rank is not 2."""
    outputs = session.get_outputs()
    chosen = outputs[0] if len(outputs) == 1 else next((o for o in outputs if o.name == "embedding"), None)
    if chosen is None:
        names = ", ".join(f"'{o.name}' {list(o.shape)}" for o in outputs) or "none"
        raise UserError(f"{source} has {len(outputs)} outputs ({names}) and none is named 'embedding'; export "
                        "a model whose only output is the embedding [B, D] (tools/export_onnx.py).")
    if chosen.shape is not None and len(chosen.shape) != 2:
        raise UserError(f"{source} declares its output '{chosen.name}' as {list(chosen.shape)}, expected the "
                        "embedding [B, D]; export a face embedding model (tools/export_onnx.py).")
    return chosen.name


def load_onnx_backbone(path: str | Path, device: torch.device | None = None) -> OnnxBackbone:
    """An ONNX Runtime session of `path` on `device` (CPU, or CUDA through onnxruntime-gpu); with no device,
    the CUDA provider when it is installed, else the CPU.

    Raises UserError when ONNX Runtime or its CUDA provider is missing, the file is not an ONNX model, or
    its input is not one float tensor [B, 3, 112, 112].
    """
    runtime = _import_onnxruntime()
    path = check_regular_file(path, "ONNX model", "pass a file written by tools/export_onnx.py")
    check_weights_file(path, "ONNX model")
    providers = ["CPUExecutionProvider"]
    if device is None:
        providers = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if name in runtime.get_available_providers()]
    elif device.type == "cuda":
        if "CUDAExecutionProvider" not in runtime.get_available_providers():
            raise UserError("--device cuda with --onnx needs onnxruntime-gpu (this ONNX Runtime runs on the CPU "
                            "only); install it or pass --device cpu.")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    try:
        session = runtime.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable models
        raise UserError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}: {exc}); pass a file "
                        "written by tools/export_onnx.py.") from exc
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if inputs else []
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(shape) != 4 \
            or tuple(shape[1:]) != INPUT_SHAPE:
        found = ", ".join(f"{i.name} {i.type} {list(i.shape)}" for i in inputs) or "no input"
        raise UserError(f"ONNX model '{path}' takes {found}; evaluation needs one float input [B, 3, "
                        f"{IMAGE_SIZE}, {IMAGE_SIZE}] (RGB in [-1, 1]), as tools/export_onnx.py writes it.")
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return OnnxBackbone(session, fixed_batch, f"'{path}'")


__all__ = ["INPUT_SHAPE", "OnnxBackbone", "embedding_output", "load_onnx_backbone"]
