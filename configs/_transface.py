"""The recipes the TransFace configs share, in one place; each config module imports one and updates it.

Not a config itself (it defines no `config`): `from configs._transface import ...` in a config module,
which utils.config.load_config then loads, merges over configs/base.py and validates as any other.

Sources: the released TransFace configs (`configs/ms1mv2_vit_*.py`, `configs/glint360k_vit_*.py` of the
TransFace repository; reference/transface_method.md) and insightface arcface_torch's WebFace42M configs
(`recognition/arcface_torch/configs/wf42m_pfc03_40epoch_64gpu_vit_{s,b,l}.py`,
`wf42m_pfc03_40epoch_8gpu_vit_b.py`, `wf42m_pfc03_32gpu_r100.py`).
"""

from easydict import EasyDict

# The datasets: classes and images as the published configs give them.
MS1MV2 = {"num_classes": 85742, "num_image": 5822653}
GLINT360K = {"num_classes": 360232, "num_image": 17091657}
WEBFACE42M = {"num_classes": 2059906, "num_image": 42474557}

# The released TransFace recipe: ArcFace (s 64, m 0.5), Partial FC 1.0, fp16, AdamW with weight decay 0.1,
# DPAP and EHSM on, seed 2048, verification on LFW, CFP-FP and AgeDB-30.
TRANSFACE = {
    "embedding_size": 512,
    "margin_list": (1.0, 0.5, 0.0),
    "sample_rate": 1.0,
    "precision": "fp16",
    "optimizer": "adamw",
    "weight_decay": 0.1,
    "dpap": True,
    "ehsm": True,
    "rec": "",  # set to the folder holding train.rec, train.idx, property and the .bin sets
    "val_targets": ("lfw", "cfp_fp", "agedb_30"),
    "num_workers": 2,
    "seed": 2048,
}

# arcface_torch's WebFace42M ViT recipe (wf42m_pfc03_40epoch_64gpu_vit_*.py): CosFace (m 0.4), Partial FC
# 0.3, fp16, AdamW lr 1e-3 with weight decay 0.1, 384 images per GPU on 64 GPUs (global batch 24,576),
# 40 epochs with num_epoch // 10 = 4 of warm-up, no verification sets (val_targets = []), verbose 2000.
# DPAP and EHSM stay on: these configs train the TransFace method with that recipe.
WEBFACE42M_VIT = {
    **TRANSFACE,
    **WEBFACE42M,
    "margin_list": (1.0, 0.0, 0.4),
    "sample_rate": 0.3,
    "lr": 0.001,
    "batch_size": 384,
    "global_batch_size": 24576,  # the published 64 GPUs x 384: fewer GPUs accumulate to it
    "num_epoch": 40,
    "warmup_epoch": 4,
    "val_targets": (),
    "verbose": 2000,
}


def recipe(*parts: dict, **settings) -> EasyDict:
    """A config: the recipe `parts` merged left to right, then `settings` (network, lr, batch, output...)."""
    merged = {}
    for part in (*parts, settings):
        merged.update(part)
    return EasyDict(merged)
