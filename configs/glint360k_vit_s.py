"""Released TransFace recipe: vit_s_dp005_mask_0 on Glint360K, 8 GPUs x 128 images, AdamW, 40 epochs."""

from configs._transface import GLINT360K, TRANSFACE, recipe

config = recipe(
    TRANSFACE,
    GLINT360K,
    network="vit_s_dp005_mask_0",
    lr=0.0001,
    batch_size=128,
    global_batch_size=1024,  # the published 8 GPUs x batch_size
    num_epoch=40,
    warmup_epoch=4,
    output="work_dirs/glint360k_vit_s",
)
