"""Released TransFace recipe: vit_l_dp005_mask_005 on Glint360K, 8 GPUs x 128 images, AdamW, 35 epochs."""

from easydict import EasyDict

config = EasyDict(
    network="vit_l_dp005_mask_005",
    embedding_size=512,
    margin_list=(1.0, 0.5, 0.0),
    sample_rate=1.0,
    precision="fp16",
    optimizer="adamw",
    lr=0.0001,
    weight_decay=0.1,
    batch_size=128,
    global_batch_size=1024,  # the published 8 GPUs x batch_size
    num_epoch=35,
    warmup_epoch=3,
    dpap=True,
    ehsm=True,
    rec="",  # set to the folder holding train.rec, train.idx, property and the .bin sets
    num_classes=360232,
    num_image=17091657,
    val_targets=("lfw", "cfp_fp", "agedb_30"),
    num_workers=2,
    output="work_dirs/glint360k_vit_l",
    seed=2048,
)
