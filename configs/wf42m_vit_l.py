"""WebFace42M recipe for TransFace-L: vit_l_dp005_mask_005, 64 GPUs x 384 images, CosFace, PFC 0.3, 40 epochs.

The numbers are those of insightface arcface_torch's `configs/wf42m_pfc03_40epoch_64gpu_vit_l.py`
(margin (1, 0, 0.4), sample rate 0.3, fp16, AdamW lr 1e-3, weight decay 0.1, batch 384 per GPU on 64 GPUs,
2,059,906 classes, 42,474,557 images, 40 epochs, warm-up num_epoch // 10, no verification sets). `vit_l_dp005_mask_005`
is the name the released backbone table marks "For WebFace42M". arcface_torch's model zoo reports for this
recipe (ViT-L(384*64), WF42M-PFC-0.3, trained without DPAP and EHSM): MFR-ALL 97.85, IJB-C TAR 98.00 % at
FAR 1e-4 and 97.23 % at 1e-5. Launch with `torchrun --nnodes 8 --nproc-per-node 8 ...` (docs/training.md);
`python -m tools.plan configs/wf42m_vit_l.py --gpus 64` checks that it fits first.
"""

from configs._transface import WEBFACE42M_VIT, recipe

config = recipe(WEBFACE42M_VIT, network="vit_l_dp005_mask_005", output="work_dirs/wf42m_vit_l")
