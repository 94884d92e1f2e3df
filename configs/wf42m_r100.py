"""insightface's CNN baseline on WebFace42M: r100, 32 GPUs x 128, CosFace, PFC 0.3, SGD, 20 epochs.

The numbers are those of insightface arcface_torch's `configs/wf42m_pfc03_32gpu_r100.py` (margin (1, 0, 0.4),
sample rate 0.3, fp16, SGD lr 0.4, momentum 0.9, weight decay 5e-4, batch 128 per GPU on 32 GPUs, 20 epochs,
warm-up num_epoch // 10 = 2, verification on LFW, CFP-FP, AgeDB-30) and of its `configs/base.py` and
training script for what that file leaves out (scale 64, polynomial decay of power 2, gradient norm clipped
at 5, seed 2048). Its model zoo reports for it (r100(128*32), WF42M-PFC-0.3): MFR-ALL 96.69, IJB-C TAR
97.82 % at FAR 1e-4 and 96.45 % at 1e-5. A CNN has no patch information, so DPAP and EHSM are off.
"""

from configs._transface import TRANSFACE, WEBFACE42M, recipe

config = recipe(
    TRANSFACE,
    WEBFACE42M,
    network="r100",
    margin_list=(1.0, 0.0, 0.4),  # CosFace
    sample_rate=0.3,
    optimizer="sgd",
    lr=0.4,
    momentum=0.9,
    weight_decay=5e-4,
    lr_scheduler="polynomial",
    lr_power=2.0,
    clip_grad_norm=5.0,
    batch_size=128,
    global_batch_size=4096,  # the published 32 GPUs x 128
    num_epoch=20,
    warmup_epoch=2,
    dpap=False,
    ehsm=False,
    output="work_dirs/wf42m_r100",
)
