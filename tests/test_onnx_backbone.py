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


def _face_graph(path, nodes, outputs):
    """A model with the face input [B, 3, 112, 112] named 'data', the given nodes and (name, shape) outputs."""
    graph = helper.make_graph(
        nodes, "odd_outputs", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["B", 3, 112, 112])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        initializer=[helper.make_tensor("flat", TensorProto.INT64, [2], [1, -1]),
                     helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


POOL = helper.make_node("GlobalAveragePool", ["data"], ["pooled"])  # [B, 3, 1, 1]
SQUEEZE = helper.make_node("Squeeze", ["pooled", "axes"], ["embedding"])  # [B, 3]


@pytest.mark.parametrize("nodes, outputs, message", [
    # Regression: tools.inference --onnx silently dropped the third of three images with this one.
    ([POOL, helper.make_node("Reshape", ["pooled", "flat"], ["out"])], [("out", None)],
     r"returned shape \[1, 9\] for 3 images, expected \[3, D\]"),
    ([POOL], [("pooled", None)], r"declares its output 'pooled' as \['B', 3, 1, 1\], expected the embedding"),
    ([POOL, SQUEEZE], [("pooled", ["B", 3, 1, 1]), ("embedding", ["B", 3])], None),  # takes 'embedding'
    ([POOL, helper.make_node("Squeeze", ["pooled", "axes"], ["feat"])], [("pooled", None), ("feat", None)],
     r"has 2 outputs \('pooled' .*'feat' .*none is named 'embedding'"),
])
def test_every_onnx_output_is_one_embedding_row_per_image(tmp_path, nodes, outputs, message):
    path = _face_graph(tmp_path / "odd.onnx", nodes, outputs)
    batch = np.zeros((3, 3, 112, 112), dtype=np.float32)
    if message is None:
        assert load_onnx_backbone(path, CPU).embed(batch).shape == (3, 3)
        return
    with pytest.raises(UserError, match=message):
        load_onnx_backbone(path, CPU).embed(batch)


def test_a_pytorch_model_returning_a_tuple_or_another_row_count_is_one_line():
    from eval.embed import embed_batch

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x

    class OneRow(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)).reshape(1, -1)  # [1, B * 3]

    images = torch.zeros(2, 3, 112, 112, dtype=torch.uint8)
    with pytest.raises(UserError, match="model Pair returned a tuple, not one embedding array"):
        embed_batch(Pair(), images, CPU)
    with pytest.raises(UserError, match=r"model OneRow returned shape \[1, 12\] for 4 images"):
        embed_batch(OneRow(), images, CPU)


def test_a_pytorch_backbone_returning_another_width_than_it_declares_is_one_line(tmp_path):
    from eval.embed import embed_batch
    from tools.inference import torch_embedder

    class Narrow(torch.nn.Module):
        num_features = 8  # as every backbone of this project declares its embedding width

        def forward(self, x):
            return x.mean((2, 3))  # [B, 3]

    images = torch.zeros(2, 3, 112, 112, dtype=torch.uint8)
    with pytest.raises(UserError, match=r"model Narrow returned shape \[4, 3\] for 4 images, expected \[4, 8\]"):
        embed_batch(Narrow(), images, CPU)
    with pytest.raises(UserError, match=r"model Narrow returned shape \[2, 3\] for 2 images, expected \[2, 8\]"):
        torch_embedder(Narrow(), CPU)(np.zeros((2, 3, 112, 112), np.float32))
