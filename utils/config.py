"""Load experiment configs: merge over configs/base.py, apply --set overrides, validate, derive.

A config is a Python module anywhere on disk that defines ``config = EasyDict(...)``. Every key must
exist in ``configs/base.py`` and have the type of its default there; mistakes name the file, the key
and the closest valid key. Values that follow from others (global batch, steps) are computed only in
``derive``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from easydict import EasyDict

import losses
from utils.errors import UserError
from utils.files import check_regular_file

BASE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "base.py"
MAX_SEED = 2**32 - 2**16  # room for up to 65536 ranks adding their rank

# Range checks: key -> (predicate, what the value must be).
_RANGES = {
    "embedding_size": (lambda v: v >= 1, "a positive integer"),
    "margin_scale": (lambda v: v > 0, "positive"),
    "sample_rate": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ehsm_top_k": (lambda v: v is None or v >= 1, "None or a positive integer"),
    "dpap_k": (lambda v: v >= 1, "a positive integer"),
    "dpap_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "dpap_alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "dpap_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lr": (lambda v: v > 0, "positive"),
    "lr_milestones": (lambda v: all(m >= 0 for m in v) and list(v) == sorted(set(v)),
                      "increasing non-negative epochs, for example (12, 20, 24)"),
    "lr_gamma": (lambda v: v > 0, "positive"),
    "weight_decay": (lambda v: v >= 0, "non-negative"),
    "warmup_epoch": (lambda v: v is None or v >= 0, "None or a non-negative integer"),
    "num_epoch": (lambda v: v >= 1, "a positive integer"),
    "clip_grad_norm": (lambda v: v >= 0, "non-negative (0 disables clipping)"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "gradient_accumulation": (lambda v: v >= 1, "a positive integer"),
    "global_batch_size": (lambda v: v >= 0, "non-negative (0: batch_size x gradient_accumulation x world size)"),
    "max_nonfinite_steps": (lambda v: v >= 1, "a positive integer"),
    "num_classes": (lambda v: v >= 0, "non-negative (0: read from the data)"),
    "num_image": (lambda v: v >= 0, "non-negative (0: read from the data)"),
    "num_workers": (lambda v: v >= 0, "non-negative"),
    "max_corrupt_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "frequent": (lambda v: v >= 1, "a positive integer"),
    "verbose": (lambda v: v >= 1, "a positive integer"),
    "save_every": (lambda v: v >= 0, "non-negative (0: only at epoch end)"),
    "save_last": (lambda v: v >= 1, "a positive integer"),
    "seed": (lambda v: 0 <= v < MAX_SEED, f"in [0, {MAX_SEED}) (NumPy seeds are 32-bit; ranks add their rank)"),
    "output": (lambda v: bool(v.strip()), "a folder path for logs and checkpoints, not empty"),
}


def _load_module(path: Path):
    check_regular_file(path, "config file", "pass the path to a config module such as configs/ms1mv2_vit_s.py")
    spec = importlib.util.spec_from_file_location(f"_transface_config_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # sys.exit() in a config would end the run with its code, training nothing
        raise UserError(f"config file '{path}' called sys.exit({exc.code!r}) while loading; a config module "
                        "must only define `config = EasyDict(...)`.") from None
    except Exception as exc:
        raise UserError(f"config file '{path}' failed to run ({type(exc).__name__}: {exc}); fix the "
                        "module so that it defines `config = EasyDict(...)`.") from exc
    return module


# Keys only the "combined" loss reads; with another loss a value other than the default is an error.
_COMBINED_LOSS_KEYS = ("margin_list", "margin_scale", "margin_exact_gradient", "interclass_filtering_threshold")


class _Base(NamedTuple):
    """configs/base.py: the defaults and the tables that say how each key is checked."""

    config: Mapping[str, Any]
    nullable: Mapping[str, type]
    item_types: Mapping[str, type]
    choices: Mapping[str, tuple]
    renamed: Mapping[str, str]


def _base() -> _Base:
    module = _load_module(BASE_CONFIG)
    return _Base(module.config, module.nullable, module.item_types, module.choices, module.renamed)


def _closest(key: str, valid: Iterable[str], renamed: Mapping[str, str],
             otherwise: str = "see configs/base.py for every valid key") -> str:
    if key in renamed:
        return f"this project calls it '{renamed[key]}'"
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'?" if match else otherwise


def _coerce(key: str, value: Any, default: Any, nullable: Mapping[str, type], source: str,
            item_type: type = str) -> Any:
    """Return `value` in the type of `default` (int -> float, list -> tuple) or raise UserError.

    A tuple default with items fixes the length and takes finite numbers; an empty one takes a sequence of
    any length of `item_type` (strings unless base.py's item_types names another)."""
    if key in nullable:
        if value is None:
            return None
        default = nullable[key]()
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        if not default and isinstance(value, str):  # --set val_targets=lfw
            value = (value,)
        ok = isinstance(value, (list, tuple))
        if ok:
            value = tuple(value)
            if default:
                ok = len(value) == len(default) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
                value = tuple(float(v) for v in value) if ok else value
            else:
                ok = all(isinstance(v, item_type) and not isinstance(v, bool) for v in value)
    elif isinstance(default, Mapping):
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        value = dict(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        if isinstance(default, tuple) and default:
            want = f"a sequence of {len(default)} finite numbers"
        elif isinstance(default, tuple):
            want = f"a sequence of {'strings' if item_type is str else item_type.__name__ + 's'}"
        elif isinstance(default, float):
            want = "a finite number"
        elif isinstance(default, Mapping):
            want = "a dict of names to values, for example dict(m=0.4)"
        else:
            want = expected.__name__
        raise UserError(f"{source}: key '{key}' must be {want}, got {value!r} ({type(value).__name__}); "
                        f"the default is {default!r}.")
    return value


def _validate(config: Mapping[str, Any], source: str, base: _Base) -> EasyDict:
    merged = dict(base.config)
    for key, value in config.items():
        if key not in base.config:
            raise UserError(f"{source}: unknown key '{key}'; {_closest(key, base.config, base.renamed)}")
        merged[key] = _coerce(key, value, base.config[key], base.nullable, source, base.item_types.get(key, str))
        if key in base.choices and merged[key] not in base.choices[key]:
            raise UserError(f"{source}: key '{key}' is {merged[key]!r}; choose one of {base.choices[key]}.")
        if key in _RANGES:
            check, want = _RANGES[key]
            if not check(merged[key]):
                raise UserError(f"{source}: key '{key}' is {merged[key]!r}; it must be {want}.")
    if merged["lr_milestones"] and merged["lr_scheduler"] != "step":
        raise UserError(f"{source}: key 'lr_milestones' is {merged['lr_milestones']!r} but lr_scheduler is "
                        f"{merged['lr_scheduler']!r}; set lr_scheduler='step' or remove lr_milestones.")
    merged["loss_params"] = _checked_loss_params(merged, source, base.config)
    return EasyDict(merged)


def _checked_loss_params(config: Mapping[str, Any], source: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """`loss_params` with each value in its default's type, after checking the loss name, that every
    parameter belongs to that loss, and that no key of the "combined" loss was changed for another."""
    name, params = config["loss"], config["loss_params"]
    if name not in losses.LOSS_NAMES:
        raise UserError(f"{source}: key 'loss' is {name!r}; "
                        f"{_closest(name, losses.LOSS_NAMES, {}, 'choose one of ' + ', '.join(losses.LOSS_NAMES))}")
    if name == "combined":
        if params:
            raise UserError(f"{source}: loss 'combined' takes no loss_params (got {', '.join(map(str, params))}); "
                            "it reads margin_list and margin_scale, or set loss='arcface' or 'cosface' with "
                            "loss_params s and m.")
        return {}
    changed = [key for key in _COMBINED_LOSS_KEYS if config[key] != base[key]]
    if changed:
        raise UserError(f"{source}: key '{changed[0]}' is {config[changed[0]]!r} but only loss 'combined' reads it "
                        f"and loss is {name!r}; remove it (or set it back to {base[changed[0]]!r}) and set the "
                        f"parameters of {name!r} in loss_params.")
    defaults = losses.loss_defaults(name)
    checked = {}
    for key, value in params.items():
        if key not in defaults:
            every = f"the parameters of {name!r} are {', '.join(defaults)}"
            raise UserError(f"{source}: loss_params key '{key}' is not a parameter of loss {name!r}; "
                            f"{_closest(key, defaults, {}, every)}")
        checked[key] = _coerce(f"loss_params.{key}", value, defaults[key], {}, source)
    return checked


def parse_overrides(items: Iterable[str], string_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Parse ``key=value`` strings into Python literals; keys in `string_keys` keep the raw text."""
    string_keys = set(string_keys)
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override '{item}' is not of the form key=value; write for example "
                            "--set batch_size=64.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if key in string_keys and not isinstance(value, str):
            value = text
        overrides[key] = value
    return overrides


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> EasyDict:
    """Config module at `path` merged over base.py, then `--set` overrides, validated."""
    base = _base()
    path = Path(path)
    module = _load_module(path)
    user = getattr(module, "config", None)
    if not isinstance(user, Mapping):
        raise UserError(f"config file '{path}' defines no `config` mapping; add `config = EasyDict(...)`.")
    config = _validate(user, f"config '{path}'", base)
    # Strings given on the command line for string keys need no quotes.
    pairs = parse_overrides(overrides, string_keys=[k for k, v in base.config.items() if isinstance(v, str)])
    config = _validate({**config, **_with_loss_params(pairs, config)}, "--set", base)
    if config.loss != "combined":  # every parameter the run uses, so that config.json rebuilds it
        config.loss_params = {**losses.loss_defaults(config.loss), **config.loss_params}
    return config


def _with_loss_params(pairs: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides with `loss_params.NAME=value` merged into loss_params: into the config's, or into
    none when the overrides switch to another loss (its parameters then start from its defaults)."""
    singles = {key.partition(".")[2]: value for key, value in pairs.items() if key.startswith("loss_params.")}
    merged = {key: value for key, value in pairs.items() if not key.startswith("loss_params.")}
    switched = merged.get("loss", config["loss"]) != config["loss"]
    if singles or (switched and "loss_params" not in merged):
        start = merged.get("loss_params", {} if switched else config["loss_params"])
        merged["loss_params"] = {**start, **singles}
    return merged


def require(config: Mapping[str, Any], key: str, what: str) -> None:
    """Raise a helpful error when a path-like key the run needs is unset."""
    if not config[key]:
        raise UserError(f"config key '{key}' is not set; set config.{key} to {what} in your config or "
                        f"pass --set {key}=...")


def derive(config: Mapping[str, Any], world_size: int) -> EasyDict:
    """Config plus the values that follow from it and the world size (the only place they are computed)."""
    if config["num_image"] <= 0:
        raise UserError("config key 'num_image' is unknown; it is read from the data before derive().")
    derived = EasyDict(dict(config))
    derived.world_size = world_size
    if config["global_batch_size"]:
        derived.gradient_accumulation = _accumulation_for(config["global_batch_size"], config["batch_size"],
                                                          world_size)
        if config["gradient_accumulation"] not in (1, derived.gradient_accumulation):
            raise UserError(f"gradient_accumulation is {config['gradient_accumulation']} but global_batch_size "
                            f"{config['global_batch_size']} makes it {derived.gradient_accumulation} on "
                            f"{world_size} processes of batch_size {config['batch_size']}; set one of the two "
                            "(global_batch_size=0 to choose gradient_accumulation yourself).")
    derived.total_batch_size = config["batch_size"] * derived.gradient_accumulation * world_size
    derived.steps_per_epoch = config["num_image"] // derived.total_batch_size
    if derived.steps_per_epoch == 0:
        raise UserError(f"one epoch of {config['num_image']} images is shorter than one global batch of "
                        f"{derived.total_batch_size}; lower batch_size or gradient_accumulation.")
    derived.total_steps = derived.steps_per_epoch * config["num_epoch"]
    warmup_epoch = config["warmup_epoch"]
    if warmup_epoch is None:
        warmup_epoch = config["num_epoch"] // 10
    derived.warmup_epoch = warmup_epoch
    derived.warmup_steps = derived.steps_per_epoch * warmup_epoch
    # The run's progress is counted in training samples, so that a resume with another global batch keeps
    # its place in the epoch and on the learning-rate curve (train.py, utils/optim.lr_at).
    derived.total_samples = derived.total_steps * derived.total_batch_size
    derived.warmup_samples = derived.warmup_steps * derived.total_batch_size
    derived.lr_milestone_samples = tuple(epoch * derived.steps_per_epoch * derived.total_batch_size
                                         for epoch in config["lr_milestones"])
    return derived


def _accumulation_for(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per step that make `global_batch_size` from `batch_size` on `world_size` processes."""
    per_step = batch_size * world_size
    if global_batch_size % per_step:
        fitting = [b for b in range(1, global_batch_size // world_size + 1)
                   if global_batch_size % (b * world_size) == 0]
        raise UserError(f"global_batch_size {global_batch_size} is not a multiple of batch_size {batch_size} x "
                        f"{world_size} processes; set batch_size to one of {_batch_list(fitting)} (or change "
                        "global_batch_size).")
    return global_batch_size // per_step


def _batch_list(sizes: list[int]) -> str:
    """The divisors worth naming: the largest few (small batches waste the device)."""
    return ", ".join(str(b) for b in sizes[-6:]) if sizes else "none (global_batch_size < world size)"


def to_json(config: Mapping[str, Any]) -> str:
    """The resolved config as JSON (written beside checkpoints so a run can be rebuilt)."""
    return json.dumps(dict(config), indent=2, sort_keys=True, default=list)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to a config module, for example configs/ms1mv2_vit_s.py")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, for example --set batch_size=64 lr=1e-3")


