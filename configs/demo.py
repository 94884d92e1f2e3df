"""The demo: vit_nano with DPAP and EHSM on the synthetic demo data, a few minutes on a laptop CPU.

    python -m tools.make_demo_data --out demo_data --seed 0
    python train.py configs/demo.py

See docs/demo.md for the data and the accuracies to expect.
"""

from easydict import EasyDict

config = EasyDict(
    network="vit_nano",  # width 64, depth 2: about 450 training images/s on 2 CPU cores
    embedding_size=512,
    margin_list=(1.0, 0.5, 0.0),  # ArcFace as released
    margin_scale=64.0,
    dpap=True,
    ehsm=True,
    precision="fp32",  # CPU; on a GPU use "bf16" or "fp16"
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.05,
    batch_size=64,
    num_epoch=8,  # 1,120 steps
    warmup_epoch=1,
    rec="demo_data",  # written by tools/make_demo_data.py
    num_classes=300,
    num_image=9000,
    num_workers=1,  # decoding 112x112 JPEGs is cheap; leave the cores to the model
    val_targets=("demo_lfw", "demo_hard"),
    frequent=20,
    verbose=280,  # verify every 2 epochs and at the end
    output="work_dirs/demo",
)
