"""Released TransFace recipe: vit_b_dp005_mask_005 on MS1MV2 (faces_emore), 8 GPUs x 512 images, AdamW, 35 epochs."""

from easydict import EasyDict

config = EasyDict(
    network="vit_b_dp005_mask_005",
    embedding_size=512,
    margin_list=(1.0, 0.5, 0.0),
    sample_rate=1.0,
    precision="fp16",
    optimizer="adamw",
    lr=0.001,
    weight_decay=0.1,
    batch_size=512,
    global_batch_size=4096,  # the published 8 GPUs x batch_size
    num_epoch=35,
    warmup_epoch=3,
    dpap=True,
    ehsm=True,
    rec="",  # set to the folder holding train.rec, train.idx, property and the .bin sets
    num_classes=85742,
    num_image=5822653,
    val_targets=("lfw", "cfp_fp", "agedb_30"),
    num_workers=2,
    output="work_dirs/ms1mv2_vit_b",
    seed=2048,
)
