"""Training that recovers a compressed generator's fidelity (needs the `train` extra:
scikit-image and scikit-learn, for the real-data tasks).

- `distill` / `finetune`: CAT's kernel-alignment distillation from the teacher into a compressed
  program (a GanGraph from a pass), feature maps matched from the IR by spatial size;
- `lottery`: iterative magnitude pruning with rewinding (GAN lottery tickets);
- `sparse_train`: STU-GAN dynamic sparse training (ERK init, drop-and-grow every Delta-T);
- `run_steps`: the shared loop, with resumable checkpoints and a progress bar;
- `tasks`, `gan`, `fid`: x4 SR on scikit-image photographs, digits GANs, FID/KID-digits.
"""

from .distill import DistillConfig, DistillResult, distill, finetune
from .features import (FeaturePair, FeatureSite, feature_sites, global_kernel_alignment,
                       kernel_alignment, match_features)
from .lottery import LotteryConfig, LotteryResult, lottery
from .loop import CheckpointConfig, CheckpointError, History, SupervisedTrainer, Trainer, run_steps
from .masks import Masks, prune_magnitude
from .sparse_train import SparseConfig, SparseResult, erk_masks, sparse_train

__all__ = ["CheckpointConfig", "CheckpointError", "DistillConfig", "DistillResult",
           "FeaturePair", "FeatureSite", "History", "LotteryConfig", "LotteryResult", "Masks",
           "SparseConfig", "SparseResult", "SupervisedTrainer", "Trainer", "distill",
           "erk_masks", "feature_sites", "finetune", "global_kernel_alignment",
           "kernel_alignment", "lottery", "match_features", "prune_magnitude", "run_steps",
           "sparse_train"]
