"""Loading released or trained backbone weights: round trip, tolerated wrappers, clear errors."""

import pytest
import torch

from backbones import get_model, load_backbone, matching_networks, read_state_dict
from utils.errors import UserError


@pytest.fixture
def saved_nano(tmp_path):
    torch.manual_seed(0)
    model = get_model("vit_nano", num_features=128).eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_save_load_round_trip_gives_identical_embeddings(saved_nano):
    model, path = saved_nano
    loaded = load_backbone("vit_nano", path).eval()
    assert loaded.num_features == 128  # read from the file
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    assert torch.equal(model(x), loaded(x))


def test_ddp_prefix_and_wrapping_dicts_are_tolerated(saved_nano, tmp_path):
    model, _ = saved_nano
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    for i, payload in enumerate([prefixed, {"state_dict": prefixed}, {"backbone": model.state_dict()}]):
        path = tmp_path / f"wrapped{i}.pt"
        torch.save(payload, path)
        assert read_state_dict(path).keys() == model.state_dict().keys()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("vit_nano", tmp_path / "absent.pt")


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        load_backbone("vit_nano", path)


def test_pickled_code_is_refused_by_weights_only_loading(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        read_state_dict(path)


def test_wrong_network_names_the_networks_that_fit(saved_nano):
    _, path = saved_nano
    with pytest.raises(UserError) as err:
        load_backbone("vit_micro", path)
    message = str(err.value)
    assert "vit_micro" in message and "--network vit_nano" in message and "shape" in message


def test_missing_and_unexpected_keys_are_listed(saved_nano, tmp_path):
    model, _ = saved_nano
    state = model.state_dict()
    state.pop("senet.0.weight")
    state["head.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        load_backbone("vit_nano", path)
    message = str(err.value)
    assert "missing: senet.0.weight" in message and "unexpected: head.weight" in message
    assert "no registered network fits" in message


def test_matching_networks_recognises_a_released_layout():
    with torch.device("meta"):
        state = get_model("vit_s_dp005_mask_0").state_dict()
    # vit_s and vit_s_dp005_mask_0 differ only in drop path and masking, not in weights.
    assert matching_networks(state) == ["vit_s", "vit_s_dp005_mask_0"]


def test_a_flipped_bit_in_a_saved_model_is_one_line_and_a_file_without_checksum_loads_unverified(tmp_path, caplog):
    """Regression: one flipped exponent bit in model.pt evaluated as 69.0 % instead of 75.5 %, unnoticed."""
    from utils.files import atomic_save

    model = get_model("vit_nano", num_features=128)
    path = tmp_path / "model.pt"
    atomic_save(model.state_dict(), path)
    load_backbone("vit_nano", path)
    assert not [r for r in caplog.records if "unverified" in r.getMessage()]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.pt' has SHA-256 .*damaged"):
        load_backbone("vit_nano", path)
    (tmp_path / "model.pt.sha256").unlink()
    torch.save(model.state_dict(), path)
    load_backbone("vit_nano", path)
    assert [r.levelname for r in caplog.records if "loading it unverified" in r.getMessage()] == ["WARNING"]
