"""TransFace-S with DPAP and EHSM trained with AdaFace: the released ms1mv2_vit_s recipe, its loss replaced.

Everything but the loss comes from configs/ms1mv2_vit_s.py (vit_s_dp005_mask_0, MS1MV2, AdamW lr 1e-3 with weight
decay 0.1, 8 GPUs x 512 images, 35 epochs, fp16, DPAP and EHSM on). The loss is AdaFace with the parameters of its
main results (mk-minchul/AdaFace `scripts/run_ir101_ms1mv2.sh`: m 0.4, h 0.333; `config.py`: s 64, t_alpha 0.01).
No released code offers this combination; EHSM's weight multiplies each sample's AdaFace cross-entropy.
"""

from configs._transface import recipe
from configs.ms1mv2_vit_s import config as transface_s

config = recipe(
    transface_s,
    loss="adaface",
    loss_params=dict(m=0.4, h=0.333, s=64.0, t_alpha=0.01),
    output="work_dirs/ms1mv2_vit_s_adaface",
)
