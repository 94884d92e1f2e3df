"""Training on your own photos: the data of "Your own photos" in docs/using_models.md (aligned by
tools.inference --detect --save-aligned, packed by tools.pack_rec, pairs by tools.make_bin).

    python train.py configs/own_photos.py

vit_nano from scratch, so the whole pipeline runs in a minute on a laptop CPU. For a model worth using,
set network="vit_s_dp005_mask_0", start from a released checkpoint with --init, and raise num_epoch.
"""

from easydict import EasyDict

config = EasyDict(
    network="vit_nano",
    precision="fp32",  # runs everywhere; on a GPU "bf16" or "fp16" is faster
    batch_size=8,  # small sets of photos: an epoch needs at least one batch
    num_epoch=4,
    warmup_epoch=1,
    rec="data/own_photos",  # written by tools.pack_rec
    num_classes=0,  # 0: counted from the data
    num_image=0,
    num_workers=0,  # small sets decode fast enough in the training process
    val_targets=("own_pairs",),  # data/own_photos/own_pairs.bin, written by tools.make_bin
    frequent=1,
    output="work_dirs/own_photos",
)
