"""WebFace42M recipe for TransFace-B on one 8-GPU node: 256 images x 12 accumulated passes per GPU.

insightface arcface_torch's `configs/wf42m_pfc03_40epoch_8gpu_vit_b.py`: the recipe of
`wf42m_vit_b.py` (configs/_transface.WEBFACE42M_VIT) with batch 256 per GPU and gradient accumulation 12
("total batchsize is 256 * 12" per GPU), so 8 GPUs reach the 64-GPU global batch: 8 x 256 x 12 =
64 x 384 = 24,576 images per optimizer step, and the same number of steps. The 12 follows from the recipe's
global_batch_size (24,576 / (256 x 8 GPUs)).
"""

from configs._transface import WEBFACE42M_VIT, recipe

config = recipe(WEBFACE42M_VIT, network="vit_b_dp005_mask_005", batch_size=256,  # x 12 passes on 8 GPUs
                output="work_dirs/wf42m_vit_b_8gpu")
