"""Released TransFace recipe: vit_s_dp005_mask_0 on MS1MV2 (faces_emore), 8 GPUs x 512 images, AdamW, 35 epochs."""

from configs._transface import MS1MV2, TRANSFACE, recipe

config = recipe(
    TRANSFACE,
    MS1MV2,
    network="vit_s_dp005_mask_0",
    lr=0.001,
    batch_size=512,
    global_batch_size=4096,  # the published 8 GPUs x batch_size
    num_epoch=35,
    warmup_epoch=3,
    output="work_dirs/ms1mv2_vit_s",
)
