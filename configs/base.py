"""Every configuration key, its default and its meaning; experiment configs override a subset.

An experiment module defines ``config = EasyDict(...)`` with the keys it changes. ``utils.config``
merges it over this file, rejects unknown keys and wrong types, and computes the derived values
(global batch, steps per epoch, total and warm-up steps) in one place.
"""

from easydict import EasyDict

from backbones.vit import ATTENTION_KINDS
from dataset import DATASET_KINDS
from losses import EHSM_RULES
from utils.optim import CENTRE_UPDATES, LR_SCHEDULES, OPTIMIZERS
from utils.precision import PRECISIONS

config = EasyDict(
    # ---- model ----
    network="vit_t",  # a name from backbones.get_model (table in docs/using_models.md)
    embedding_size=512,  # size of the face embedding
    gradient_checkpointing=None,  # None: the variant's released setting; True/False forces it
    compile=False,  # torch.compile the backbone
    attention="sdpa",  # "sdpa": PyTorch's fused kernels; "explicit": fp32 softmax(QK^T)V as the released code
    init="",  # path to pretrained backbone weights (a state_dict .pt) to start from
    # ---- classifier and loss ----
    # The margin head, a name of losses.get_margin_loss (table in docs/losses.md): "combined" (ArcFace and
    # CosFace through margin_list, margin_scale, margin_exact_gradient and interclass_filtering_threshold,
    # as before), "arcface", "cosface", "adaface", "magface", "curricularface", "elasticface_arc",
    # "elasticface_cos", "elasticface_arc_plus", "elasticface_cos_plus", "uniface"
    loss="combined",
    # Parameters of `loss` that differ from its published defaults (losses.loss_defaults(loss)), by the
    # released code's names; each value has its default's type and the loss checks its range. Unknown
    # names are errors naming the closest valid one; "combined" takes none (it reads the margin_* keys).
    #   arcface, cosface:   s (scale), m (margin), interclass_filtering_threshold; arcface exact_gradient
    #   adaface:            m, h (share of the margin adapting to the norm), s, t_alpha (norm EMA momentum)
    #   magface:            s, l_a, u_a (norm range), l_margin, u_margin (margins there), lambda_g (regulariser)
    #   curricularface:     s, m
    #   elasticface_arc, elasticface_cos, elasticface_arc_plus, elasticface_cos_plus: s, m (mean margin),
    #                       std (its standard deviation), rank_matching ("+": the paper's order, not the released)
    #   uniface:            s, m, l (weight of the negative terms)
    # e.g. loss="adaface", loss_params=dict(m=0.4, h=0.333); every parameter used is written to config.json.
    # --set loss_params.NAME=VALUE changes one. Defaults and sources: docs/losses.md.
    loss_params={},
    # (m1, m2, m3) of the target logit cos(m1*theta + m2) - m3: ArcFace (1, .5, 0), CosFace (1, 0, .4)
    margin_list=(1.0, 0.5, 0.0),
    margin_scale=64.0,  # s, the logit scale
    margin_exact_gradient=False,  # False: released straight-through angular margin; True: exact gradient
    interclass_filtering_threshold=0.0,  # zero non-target logits above this cosine (0 disables)
    sample_rate=1.0,  # Partial FC: fraction of class centres sampled per step, in (0, 1]
    # "all": the optimizer steps every centre (zero gradient on rows not sampled; insightface's newer
    # Partial FC); "sampled": AdamW steps only the rows sampled since the last step, as the released
    # PartialFCAdamW (cheaper at low sample rates); docs/partial_fc.md
    centre_update="all",
    # ---- EHSM (entropy-based hard sample mining) ----
    ehsm=True,  # weight each sample's loss by its patch-level hardness
    ehsm_gamma=1.0,  # gamma of w = 1 + exp(-gamma * reduction)
    ehsm_top_k=None,  # None: all patches; else the K largest patch std enter the reduction
    ehsm_rule="released",  # "released": mean of patch std; "entropy_mean" / "entropy_sum": the paper's
    # ---- DPAP (dominant patch amplitude perturbation) ----
    dpap=True,  # perturb the dominant patches of a random subset of the batch
    dpap_k=7,  # number of dominant patches perturbed per chosen image
    dpap_prob=0.2,  # probability that an image of the batch is chosen
    dpap_alpha=1.0,  # lambda ~ U(0, alpha), the amplitude mixing weight
    dpap_ratio=1.0,  # area fraction of the centred shifted spectrum that is mixed, window side
    #                  int(side * sqrt(ratio)) as released (1.0: all of it)
    dpap_quantize=True,  # truncate perturbed pixels to uint8 as the released code does
    # ---- optimisation ----
    optimizer="adamw",  # "adamw" or "sgd"
    lr=1e-3,  # peak learning rate for the global batch
    momentum=0.9,  # SGD momentum
    betas=(0.9, 0.999),  # AdamW betas
    weight_decay=0.1,
    no_weight_decay_on_norm_bias=False,  # exclude norms, biases, pos_embed and mask_token from decay
    lr_scheduler="polynomial",  # "polynomial" (released), "cosine" or "step" (MultiStepLR once per epoch)
    lr_power=2.0,  # exponent of the polynomial decay
    lr_milestones=(),  # "step": epochs (counted from 0) from which the rate is multiplied by lr_gamma once more
    lr_gamma=0.1,  # "step": factor applied at each milestone
    warmup_epoch=None,  # None: num_epoch // 10 as released
    num_epoch=20,
    clip_grad_norm=5.0,  # max gradient norm of the backbone; 0 disables clipping
    precision="fp16",  # "fp16" (GradScaler), "bf16" or "fp32"
    batch_size=128,  # images per process per forward pass
    gradient_accumulation=1,  # forward passes per optimizer step (replaced when global_batch_size is set)
    # images per optimizer step over all processes; 0: batch_size x gradient_accumulation x world size. When
    # set, gradient_accumulation = global_batch_size / (batch_size x world size), so a recipe keeps its global
    # batch (and its learning rate) on fewer GPUs: 4096 on 4 GPUs x 512 runs 2 micro-batches per step
    global_batch_size=0,
    max_nonfinite_steps=10,  # stop after this many consecutive non-finite losses
    seed=2048,
    # ---- data ----
    dataset="recordio",  # "recordio" (train.rec/train.idx), "folder" (identity sub-folders), "synthetic"
    rec="",  # data directory: train.rec/train.idx/property, or the image folder
    num_classes=0,  # number of identities; 0: read from the data, else checked against it
    num_image=0,  # number of training images; 0: read from the data, else checked against it
    num_workers=2,  # DataLoader workers per process
    max_corrupt_fraction=0.001,  # stop when more than this fraction of records fails to decode
    # where the binary, memory-mapped form of a large train.idx is kept (shared by the ranks of a node):
    # "" beside train.idx, or $XDG_CACHE_HOME/transface/index (else ~/.cache/transface/index) when that folder
    # is read-only; a folder; "off" (every process parses the text). Only for a train.idx of 4 MiB or more.
    index_cache="",
    gpu_decode=False,  # decode JPEGs on the GPU (CUDA only)
    val_targets=(),  # names of .bin verification sets in `rec` (for example "lfw", "cfp_fp", "agedb_30")
    # ---- logging, verification, checkpoints ----
    output="work_dirs/run",  # where logs, TensorBoard events and checkpoints go
    frequent=10,  # log every this many optimizer steps
    verbose=2000,  # verify on val_targets every this many optimizer steps
    save_every=0,  # checkpoint every this many optimizer steps (0: only at epoch end)
    save_last=3,  # keep this many recent checkpoints
    resume=False,  # continue from the newest complete checkpoint in `output`
    resume_allow_change=False,  # resume even though the data (images, classes, index) or the seed changed
    tensorboard=True,  # the training scalars as TensorBoard events in <output>/tensorboard
    using_wandb=False,  # the same scalars to Weights & Biases (needs `pip install wandb`; files in <output>/wandb)
    wandb_project="transface",  # W&B project of the run (the run is named after the output folder)
    wandb_entity="",  # W&B team or user; "" for your default entity
)

# Keys whose default is None take None or a value of this type.
nullable = {
    "gradient_checkpointing": bool,
    "ehsm_top_k": int,
    "warmup_epoch": int,
}

# Keys holding a sequence of any length whose items have this type (other such keys hold strings).
item_types = {
    "lr_milestones": int,
}

# Keys limited to a fixed set of values.
choices = {
    "attention": ATTENTION_KINDS,
    "ehsm_rule": EHSM_RULES,
    "optimizer": OPTIMIZERS,
    "centre_update": CENTRE_UPDATES,
    "lr_scheduler": LR_SCHEDULES,
    "precision": PRECISIONS,
    "dataset": DATASET_KINDS,
}

# Keys of the released arcface_torch/TransFace configs that this project names differently.
renamed = {
    "fp16": "precision",
    "gradient_acc": "gradient_accumulation",
    "save_all_states": "save_every",
    "dali": "gpu_decode",
}
