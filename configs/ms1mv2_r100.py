"""insightface's ArcFace baseline: r100 on MS1MV2 (faces_emore), 8 GPUs x 128 images, SGD, 20 epochs.

The numbers are those of insightface's arcface_torch `configs/ms1mv2_r100.py` (margin (1, 0.5, 0), SGD with
lr 0.1, momentum 0.9, weight decay 5e-4, batch 128 per GPU, fp16, 20 epochs, no warm-up) and of its
`configs/base.py` and training script for what that file leaves out (scale 64, polynomial decay of power 2,
gradient norm clipped at 5, seed 2048). A CNN has no patch information, so DPAP and EHSM are off.
"""

from easydict import EasyDict

config = EasyDict(
    network="r100",
    embedding_size=512,
    margin_list=(1.0, 0.5, 0.0),  # ArcFace
    sample_rate=1.0,
    precision="fp16",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    lr_scheduler="polynomial",
    lr_power=2.0,
    clip_grad_norm=5.0,
    batch_size=128,
    num_epoch=20,
    warmup_epoch=0,
    dpap=False,
    ehsm=False,
    rec="",  # set to the folder holding train.rec, train.idx, property and the .bin sets
    num_classes=85742,
    num_image=5822653,
    val_targets=("lfw", "cfp_fp", "agedb_30"),
    num_workers=2,
    output="work_dirs/ms1mv2_r100",
    seed=2048,
)
