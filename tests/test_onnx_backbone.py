"""eval.onnx_backbone: an exported backbone in ONNX Runtime embeds like the PyTorch one; bad models are
clear errors."""

import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from backbones import get_model
from eval import verification
from eval.onnx_backbone import load_onnx_backbone
from tests.test_verification import _write_bin
from tools import export_onnx
from utils.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = get_model("vit_nano", num_features=24).eval()
    torch.save(model.state_dict(), folder / "model.pt")
    export_onnx.export(model, folder / "dynamic.onnx", opset=17, dynamic_batch=True)
    export_onnx.export(model, folder / "fixed.onnx", opset=17, dynamic_batch=False)  # batch 1
    return model, folder


@pytest.mark.parametrize("name", ["dynamic.onnx", "fixed.onnx"])
def test_onnx_backbone_embeds_like_pytorch_for_any_batch_size(nano, name):
    model, folder = nano
    backbone = load_onnx_backbone(folder / name, CPU)
    assert backbone.fixed_batch == (1 if name == "fixed.onnx" else None)
    x = torch.rand(5, 3, 112, 112) * 2 - 1  # 5 images: a fixed batch of 1 runs 5 times
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(backbone(x).numpy(), expected.numpy(), atol=1e-4, rtol=1e-4)


def _graph_with_input(path, shape):
    """A valid ONNX model whose one input has `shape` (global average pool, then flatten)."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["embedding"])],
        "not_a_face_model", [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("shape", [["B", 3, 96, 96], ["B", 1, 112, 112], [3, 112, 112]])
def test_model_without_a_face_input_exits_2_naming_the_shape(tmp_path, capsys, shape):
    path = _graph_with_input(tmp_path / "other.onnx", shape)
    _write_bin(tmp_path / "lfw.bin", 10)
    argv = ["--onnx", str(path), "--bins", str(tmp_path / "lfw.bin"), "--device", "cpu"]
    assert verification.main(argv) == 2
    err = capsys.readouterr().err
    assert f"other.onnx' takes data tensor(float) {shape}" in err
    assert "needs one float input [B, 3, 112, 112]" in err and "Traceback" not in err


def test_file_that_is_not_onnx_exits_2(tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    _write_bin(tmp_path / "lfw.bin", 10)
    argv = ["--onnx", str(tmp_path / "model.onnx"), "--bins", str(tmp_path / "lfw.bin"), "--device", "cpu"]
    assert verification.main(argv) == 2
    assert "model.onnx' is not a readable ONNX model" in capsys.readouterr().err


def test_missing_onnx_runtime_is_one_clear_error(nano, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when not installed
    with pytest.raises(UserError, match=r"--onnx needs ONNX Runtime.*pip install onnxruntime"):
        load_onnx_backbone(nano[1] / "dynamic.onnx", CPU)


def test_verification_cli_with_onnx_prints_the_pytorch_accuracy(nano, tmp_path, capsys):
    _, folder = nano
    _write_bin(tmp_path / "agedb_30.bin", 20)
    common = ["--bins", str(tmp_path / "agedb_30.bin"), "--device", "cpu", "--batch-size", "8"]
    assert verification.main(["--model-prefix", str(folder / "model.pt"), "--network", "vit_nano", *common]) == 0
    pytorch = capsys.readouterr().out
    assert verification.main(["--onnx", str(folder / "dynamic.onnx"), *common]) == 0
    assert capsys.readouterr().out == pytorch  # accuracy, std and XNorm to the printed digits
