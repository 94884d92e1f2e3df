"""AdaFace's published CNN recipe: IR-101 on MS1MV2 (faces_emore), 2 GPUs x 256 images, SGD, 26 epochs.

The numbers are those of mk-minchul/AdaFace `scripts/run_ir101_ms1mv2.sh` (AdaFace m 0.4, h 0.333; lr 0.1 with
milestones 12, 20, 24; batch 512 over 2 GPUs, which `main.py` divides by the GPU count; 26 epochs; 16-bit) and of
what that script leaves to `config.py` (s 64, t_alpha 0.01, momentum 0.9, lr_gamma 0.1, seed 42) and to
`train_val.py` (SGD, weight decay 5e-4 on every parameter but BatchNorm's, the class centres included; MultiStepLR
stepped once per epoch; no warm-up; no gradient clipping; plain mean cross-entropy).

Not the same: AdaFace's IR-101 is the (3, 13, 30, 3) IR network of its `net.py`; the nearest here is
insightface's iresnet100 (`r100`, the same blocks and depth; its stem, shortcut and output layer differ slightly).
Weight decay is left out of every 1-D parameter (BatchNorm, and here also the PReLU slopes, which AdaFace
decays). AdaFace's low-resolution, crop and photometric augmentations (probability 0.2 each) are not
implemented. A CNN has no patch information, so DPAP and EHSM are off.
"""

from configs._transface import MS1MV2, recipe

config = recipe(
    MS1MV2,
    network="r100",
    embedding_size=512,
    loss="adaface",
    loss_params=dict(m=0.4, h=0.333, s=64.0, t_alpha=0.01),
    sample_rate=1.0,
    precision="fp16",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    no_weight_decay_on_norm_bias=True,
    lr_scheduler="step",
    lr_milestones=(12, 20, 24),
    lr_gamma=0.1,
    warmup_epoch=0,
    num_epoch=26,
    clip_grad_norm=0.0,
    batch_size=256,
    global_batch_size=512,  # the published 2 GPUs x 256
    dpap=False,
    ehsm=False,
    rec="",  # set to the folder holding train.rec, train.idx, property and the .bin sets
    val_targets=("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"),
    seed=42,
    output="work_dirs/ms1mv2_r100_adaface",
)
