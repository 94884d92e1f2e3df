"""ONNX export: ONNX Runtime matches PyTorch, one output, the documented names and shapes, clear failures."""

import contextlib
import io
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from backbones import get_model, load_backbone
from tools import export_onnx
from utils.opencv import cv2


def graph_dims(value_info) -> list:
    """Dimensions of an ONNX graph input/output: ints, or the name of a dynamic axis."""
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param
            for dim in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def nano_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_nano.pt"
    torch.save(get_model("vit_nano").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def exported_nano(nano_weights, tmp_path_factory):
    """vit_nano exported with a dynamic batch and checked on an aligned face image: (path, printed text)."""
    folder = tmp_path_factory.mktemp("export")
    face = cv2.resize(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8), (112, 112))
    cv2.imwrite(str(folder / "face.png"), face)
    output = folder / "vit_nano.onnx"
    argv = ["--network", "vit_nano", "--weights", str(nano_weights), "--output", str(output),
            "--dynamic-batch", "--image", str(folder / "face.png")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = export_onnx.main(argv)
    assert status == 0, printed.getvalue()
    return output, printed.getvalue()


def test_dynamic_batch_export_matches_pytorch_in_onnx_runtime(exported_nano, nano_weights):
    output, printed = exported_nano
    assert "tolerance 0.0001" in printed
    for label in ("random batch 1", "random batch 3", "1 images"):
        assert re.search(rf"{label}: output \[\d, 512\], max abs diff \S+, max rel diff \S+ ok", printed)
    model = load_backbone("vit_nano", nano_weights).eval()
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for batch_size in (1, 3):
        x = torch.rand(batch_size, 3, 112, 112, generator=torch.Generator().manual_seed(batch_size)) * 2 - 1
        onnx_embedding = session.run(None, {"data": x.numpy()})[0]
        with torch.no_grad():
            torch_embedding = model(x).numpy()
        assert onnx_embedding.shape == (batch_size, 512)
        np.testing.assert_allclose(onnx_embedding, torch_embedding, atol=1e-4, rtol=1e-4)


def test_graph_has_one_output_and_the_documented_names(exported_nano):
    output, _ = exported_nano
    graph = onnx.load(str(output)).graph
    assert [value.name for value in graph.input] == ["data"]
    assert [value.name for value in graph.output] == ["embedding"]
    assert graph_dims(graph.input[0]) == ["batch", 3, 112, 112]
    assert graph_dims(graph.output[0]) == ["batch", 512]


def test_released_vit_t_exports_with_static_batch_shapes(tmp_path):
    """The export alone (under 2 s for vit_t on CPU; no parity run) to check a released network's graph;
    the weights are left uninitialised since only shapes matter."""
    with torch.device("meta"):
        model = get_model("vit_t")
    path = tmp_path / "vit_t.onnx"
    export_onnx.export(model.to_empty(device="cpu").eval(), path, opset=17, dynamic_batch=False)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [value.name for value in graph.input] == ["data"]
    assert graph_dims(graph.input[0]) == [1, 3, 112, 112]
    assert [graph_dims(value) for value in graph.output] == [[1, 512]]


def test_parity_beyond_tolerance_exits_1_and_writes_nothing(nano_weights, tmp_path, capsys):
    output = tmp_path / "strict.onnx"
    argv = ["--network", "vit_nano", "--weights", str(nano_weights), "--output", str(output),
            "--tolerance", "1e-12"]
    assert export_onnx.main(argv) == 1
    assert "differ by more than 1e-12" in capsys.readouterr().err
    assert not output.exists() and not list(tmp_path.glob("*.partial"))


def test_simplify_without_onnxsim_is_a_clear_error(nano_weights, tmp_path, capsys):
    try:
        import onnxsim  # noqa: F401
        pytest.skip("onnxsim is installed")
    except ImportError:
        pass
    argv = ["--network", "vit_nano", "--weights", str(nano_weights), "--output", str(tmp_path / "m.onnx"),
            "--simplify"]
    assert export_onnx.main(argv) == 2
    assert "pip install onnxsim" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--opset", "13"], "--opset 13 is not supported"),
    (["--weights", "absent.pt"], "weights file 'absent.pt' does not exist"),
])
def test_user_mistakes_exit_2_with_a_message(nano_weights, tmp_path, capsys, extra, message):
    argv = ["--network", "vit_nano", "--weights", str(nano_weights), "--output", str(tmp_path / "m.onnx"),
            *extra]
    assert export_onnx.main(argv) == 2
    assert message in capsys.readouterr().err


def test_mobilefacenet_export_matches_pytorch_in_onnx_runtime(tmp_path):
    """mbf with random BatchNorm statistics (fresh ones give near-zero embeddings that any tolerance
    passes), exported with a dynamic batch through the CLI, then compared in a fresh ORT session."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = get_model("mbf", num_features=128)
    for bn in model.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                bn.running_mean.normal_(0.0, 0.1, generator=generator)
                bn.running_var.uniform_(0.5, 1.5, generator=generator)
                bn.bias.normal_(0.0, 0.1, generator=generator)
    weights, output = tmp_path / "mbf.pt", tmp_path / "mbf.onnx"
    torch.save(model.state_dict(), weights)
    argv = ["--network", "mbf", "--weights", str(weights), "--output", str(output), "--dynamic-batch"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export_onnx.main(argv) == 0, printed.getvalue()
    assert "output 'embedding' [batch, 128]" in printed.getvalue()
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 112, 112, generator=generator) * 2 - 1
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    embedding = session.run(None, {"data": x.numpy()})[0]
    assert embedding.shape == (3, 128) and np.abs(expected).max() > 1e-2
    assert np.abs(embedding - expected).max() <= 1e-4 * np.abs(expected).max()
