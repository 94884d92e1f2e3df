"""ElasticFace-Arc+'s published recipe: iresnet100 on MS1MV2 (faces_emore), 4 GPUs x 128 images, SGD, 26 epochs.

The numbers are those of fdbtrs/ElasticFace `config/config.py` with its ElasticArcFacePlus settings (s 64, m 0.5,
std 0.0175; momentum 0.9, weight decay 5e-4, batch 128 per GPU, lr 0.1, 26 epochs, no warm-up, the rate times
0.1 from epochs 7, 13, 19 and 24, counted from 0, as its `lr_step_func` with [8, 14, 20, 25] gives) and of its
`train.py` (SGD over every parameter, BatchNorm included, lr 0.1 / 512 x the global batch, gradient norm clipped
at 5, fp32, the LambdaLR stepped once per epoch). The global batch of 512 (4 GPUs) is the one of its released
checkpoint, 295,672 steps for 26 epochs of 5,822,653 images. Its iresnet100 is insightface's, `r100` here.

Not the same: the margins come from the run's seeded generator instead of the GPU's unseeded one (docs/losses.md).
A CNN has no patch information, so DPAP and EHSM are off.
"""

from configs._transface import MS1MV2, recipe

config = recipe(
    MS1MV2,
    network="r100",
    embedding_size=512,
    loss="elasticface_arc_plus",
    loss_params=dict(s=64.0, m=0.5, std=0.0175),
    sample_rate=1.0,
    precision="fp32",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    no_weight_decay_on_norm_bias=False,
    lr_scheduler="step",
    lr_milestones=(7, 13, 19, 24),
    lr_gamma=0.1,
    warmup_epoch=0,
    num_epoch=26,
    clip_grad_norm=5.0,
    batch_size=128,
    global_batch_size=512,  # 4 GPUs x 128
    dpap=False,
    ehsm=False,
    rec="",  # set to the folder holding train.rec, train.idx, property and the .bin sets
    val_targets=("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw"),
    output="work_dirs/ms1mv2_r100_elasticface_arc_plus",
)
