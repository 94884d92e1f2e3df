"""Config loading: merge over base.py, --set overrides, validation errors, derived values."""

import json
from pathlib import Path

import pytest

from utils.config import derive, load_config, parse_overrides, require
from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent
RELEASED = ["ms1mv2_vit_s", "ms1mv2_vit_b", "ms1mv2_vit_l", "glint360k_vit_s", "glint360k_vit_b",
            "glint360k_vit_l"]


def write_config(tmp_path, body: str) -> Path:
    path = tmp_path / "exp.py"
    path.write_text("from easydict import EasyDict\nconfig = EasyDict(" + body + ")\n")
    return path


def test_merge_keeps_base_defaults_and_applies_module_values(tmp_path):
    config = load_config(write_config(tmp_path, "batch_size=64, lr=2e-4"))
    assert config.batch_size == 64 and config.lr == 2e-4
    assert config.margin_list == (1.0, 0.5, 0.0) and config.dpap_k == 7  # from base.py


def test_config_may_live_anywhere_on_disk(tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    config = load_config(write_config(nested, "network='vit_nano'"))
    assert config.network == "vit_nano"


def test_overrides_are_parsed_and_type_checked(tmp_path):
    path = write_config(tmp_path, "")
    config = load_config(path, ["batch_size=32", "lr=1e-3", "network=vit_s", "margin_list=(1.0,0.0,0.4)",
                                "ehsm_top_k=16", "dpap=False", "rec=/data/123"])
    assert config.batch_size == 32 and isinstance(config.lr, float)
    assert config.network == "vit_s" and config.rec == "/data/123"
    assert config.margin_list == (1.0, 0.0, 0.4) and config.ehsm_top_k == 16 and config.dpap is False


def test_int_is_accepted_for_float_keys_and_becomes_float(tmp_path):
    config = load_config(write_config(tmp_path, "lr=1"))
    assert config.lr == 1.0 and isinstance(config.lr, float)


def test_nullable_key_takes_none_or_its_type(tmp_path):
    assert load_config(write_config(tmp_path, "warmup_epoch=None")).warmup_epoch is None
    with pytest.raises(UserError, match="warmup_epoch"):
        load_config(write_config(tmp_path, "warmup_epoch='two'"))


def test_unknown_key_names_file_and_closest_valid_key(tmp_path):
    path = write_config(tmp_path, "batch_sise=64")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert "batch_sise" in str(err.value) and "batch_size" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("released, ours", [("fp16", "precision"), ("gradient_acc", "gradient_accumulation"),
                                             ("save_all_states", "save_every"), ("dali", "gpu_decode")])
def test_renamed_released_key_points_to_our_name(tmp_path, released, ours):
    with pytest.raises(UserError, match=f"this project calls it '{ours}'"):
        load_config(write_config(tmp_path, f"{released}=True"))


def test_arcface_torch_wandb_keys_load_as_they_are(tmp_path):
    cfg = load_config(write_config(tmp_path, "using_wandb=True, wandb_project='p', wandb_entity='e'"))
    assert (cfg.using_wandb, cfg.wandb_project, cfg.wandb_entity) == (True, "p", "e")


def test_unknown_override_key_is_an_error(tmp_path):
    with pytest.raises(UserError, match="did you mean 'lr'"):
        load_config(write_config(tmp_path, ""), ["lrr=0.1"])


@pytest.mark.parametrize("body, key", [
    ("batch_size='64'", "batch_size"),
    ("batch_size=6.4", "batch_size"),
    ("dpap=1", "dpap"),
    ("margin_list=(1.0, 0.5)", "margin_list"),
    ("val_targets=('lfw', 3)", "val_targets"),
    ("network=3", "network"),
])
def test_wrong_type_names_the_key(tmp_path, body, key):
    with pytest.raises(UserError, match=key):
        load_config(write_config(tmp_path, body))


@pytest.mark.parametrize("override", ["sample_rate=0", "sample_rate=1.5", "batch_size=0", "dpap_prob=2",
                                      "precision=fp8", "optimizer=lamb"])
def test_out_of_range_or_invalid_choice_is_an_error(tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=key):
        load_config(write_config(tmp_path, ""), [override])


def test_malformed_override_is_an_error():
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["batch_size"])


def test_missing_file_and_broken_module_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    broken = tmp_path / "broken.py"
    broken.write_text("config = EasyDict(\n")
    with pytest.raises(UserError, match="broken.py"):
        load_config(broken)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(UserError, match="defines no `config`"):
        load_config(empty)


def test_derive_computes_global_batch_and_steps(tmp_path):
    config = load_config(write_config(tmp_path, "batch_size=8, gradient_accumulation=2, num_image=1000, "
                                                "num_epoch=20, warmup_epoch=None"))
    derived = derive(config, world_size=4)
    assert derived.total_batch_size == 64
    assert derived.steps_per_epoch == 1000 // 64
    assert derived.total_steps == 15 * 20 and derived.warmup_epoch == 2 and derived.warmup_steps == 30


@pytest.mark.parametrize("name", RELEASED)
def test_a_released_recipe_keeps_its_published_global_batch_on_fewer_gpus(name):
    """Issue 28: on 4 GPUs the recipe's 8 x batch_size images per step come from 2 micro-batches."""
    config = load_config(REPO / "configs" / f"{name}.py", ["num_image=5822653"])
    published = 8 * config.batch_size
    for world_size, accumulation in [(8, 1), (4, 2), (1, 8)]:
        derived = derive(config, world_size)
        assert derived.gradient_accumulation == accumulation and derived.total_batch_size == published
        assert derived.steps_per_epoch == 5822653 // published


def test_a_global_batch_that_does_not_divide_names_the_batch_sizes_that_would(tmp_path):
    config = load_config(write_config(tmp_path, "batch_size=48, global_batch_size=4096, num_image=10**6"))
    with pytest.raises(UserError, match=r"^global_batch_size 4096 is not a multiple of batch_size 48 x 4 "
                                        r"processes; set batch_size to one of 32, 64, 128, 256, 512, 1024 "):
        derive(config, world_size=4)
    config.batch_size = 64
    assert derive(config, world_size=4).gradient_accumulation == 16


def test_a_gradient_accumulation_that_global_batch_size_would_override_is_one_line(tmp_path):
    """Both keys set and disagreeing: the explicit gradient_accumulation is not silently replaced."""
    config = load_config(write_config(tmp_path, "batch_size=64, global_batch_size=4096, gradient_accumulation=2, "
                                                "num_image=10**6"))
    with pytest.raises(UserError, match=r"^gradient_accumulation is 2 but global_batch_size 4096 makes it 16 on 4 "):
        derive(config, world_size=4)
    config.gradient_accumulation = 16  # agreeing is fine
    assert derive(config, world_size=4).gradient_accumulation == 16

def test_derive_rejects_an_epoch_shorter_than_a_batch(tmp_path):
    config = load_config(write_config(tmp_path, "batch_size=64, num_image=10"))
    with pytest.raises(UserError, match="lower batch_size"):
        derive(config, world_size=1)


def test_require_explains_how_to_set_an_unset_path(tmp_path):
    config = load_config(REPO / "configs" / "ms1mv2_vit_s.py")
    with pytest.raises(UserError, match="--set rec="):
        require(config, "rec", "the folder holding train.rec")


@pytest.mark.parametrize("name", RELEASED)
def test_released_configs_load_with_released_hyper_parameters(name):
    config = load_config(REPO / "configs" / f"{name}.py")
    glint = name.startswith("glint360k")
    assert config.batch_size == (128 if glint else 512)
    assert config.lr == (1e-4 if glint else 1e-3)
    assert config.num_classes == (360232 if glint else 85742)
    assert config.num_epoch == (35 if name in ("glint360k_vit_l",) or not glint else 40)
    assert config.optimizer == "adamw" and config.weight_decay == 0.1 and config.precision == "fp16"
    assert config.margin_list == (1.0, 0.5, 0.0) and config.rec == ""


@pytest.mark.parametrize("name", RELEASED)
def test_configs_built_from_the_shared_recipe_equal_the_configs_they_replaced(name):
    """The six ViT configs take their recipe from configs/_transface.py; their loaded values are those they
    had as six copies (captured from main at b61837d into tests/data/transface_configs_before_recipe.json).
    Keys added to base.py since then are not compared."""
    before = json.loads((REPO / "tests" / "data" / "transface_configs_before_recipe.json").read_text())[name]
    config = load_config(REPO / "configs" / f"{name}.py")
    after = json.loads(json.dumps({key: config[key] for key in before}, default=list))
    assert after == before


@pytest.mark.parametrize(("name", "network", "gpus"), [
    ("wf42m_vit_s", "vit_s_dp005_mask_0", 64),
    ("wf42m_vit_b", "vit_b_dp005_mask_005", 64),
    ("wf42m_vit_l", "vit_l_dp005_mask_005", 64),
    ("wf42m_vit_b_8gpu", "vit_b_dp005_mask_005", 8),
])
def test_webface42m_vit_configs_have_arcface_torch_numbers_and_one_global_batch(name, network, gpus):
    """insightface arcface_torch's wf42m_pfc03_40epoch_{64,8}gpu_vit_*.py: CosFace, PFC 0.3, AdamW 1e-3,
    weight decay 0.1, 40 epochs, 4 of warm-up, 2,059,906 classes; 64 x 384 = 8 x 256 x 12 images a step."""
    config = derive(load_config(REPO / "configs" / f"{name}.py"), gpus)
    assert config.network == network and config.margin_list == (1.0, 0.0, 0.4) and config.sample_rate == 0.3
    assert config.optimizer == "adamw" and config.lr == 1e-3 and config.weight_decay == 0.1
    assert config.num_epoch == 40 and config.warmup_epoch == 4 and config.precision == "fp16"
    assert config.num_classes == 2059906 and config.num_image == 42474557 and config.val_targets == ()
    assert config.total_batch_size == 24576 and config.dpap and config.ehsm


def test_webface42m_r100_config_has_arcface_torch_numbers():
    """insightface arcface_torch's wf42m_pfc03_32gpu_r100.py."""
    config = derive(load_config(REPO / "configs" / "wf42m_r100.py"), 32)
    assert config.network == "r100" and config.margin_list == (1.0, 0.0, 0.4) and config.sample_rate == 0.3
    assert config.optimizer == "sgd" and config.lr == 0.4 and config.momentum == 0.9 and config.weight_decay == 5e-4
    assert config.batch_size == 128 and config.total_batch_size == 4096 and config.num_epoch == 20
    assert config.warmup_epoch == 2 and config.num_classes == 2059906 and not config.dpap and not config.ehsm


@pytest.mark.parametrize(("name", "margins", "weight_decay", "num_classes"), [
    ("ms1mv2_r100", (1.0, 0.5, 0.0), 5e-4, 85742),
    ("glint360k_r100", (1.0, 0.0, 0.4), 1e-4, 360232),
])
def test_cnn_configs_load_with_insightface_arcface_torch_hyper_parameters(name, margins, weight_decay, num_classes):
    """The numbers of insightface's arcface_torch configs of the same names (its Glint360K r100 recipe
    uses weight decay 1e-4), and DPAP and EHSM off, which a CNN cannot use."""
    config = load_config(REPO / "configs" / f"{name}.py")
    assert config.network == "r100" and config.margin_list == margins and config.margin_scale == 64.0
    assert config.optimizer == "sgd" and config.lr == 0.1 and config.momentum == 0.9
    assert config.weight_decay == weight_decay and not config.no_weight_decay_on_norm_bias
    assert config.batch_size == 128 and config.num_epoch == 20 and config.warmup_epoch == 0
    assert config.lr_scheduler == "polynomial" and config.lr_power == 2.0 and config.clip_grad_norm == 5.0
    assert config.precision == "fp16" and config.num_classes == num_classes and config.sample_rate == 1.0
    assert not config.dpap and not config.ehsm and config.rec == ""


def test_a_single_name_is_accepted_for_a_list_of_names(tmp_path):
    assert load_config(write_config(tmp_path, ""), ["val_targets=lfw"]).val_targets == ("lfw",)


def test_a_misspelled_device_is_a_clear_error():
    from utils.distributed import pick_device

    with pytest.raises(UserError, match="'gpu' is not a device name"):
        pick_device(0, "gpu")
