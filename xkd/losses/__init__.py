"""XKD objectives (paper Algorithm 1, eq. 1-12; docs/method.md §4), each a small pure function or module."""
from xkd.losses.distillation import TeacherCentre, cross_modal_distillation, distillation_monitors, teacher_probabilities
from xkd.losses.mmd import mmd_rbf
from xkd.losses.reconstruction import masked_reconstruction_loss, normalized_patch_targets
from xkd.losses.refine import cross_modal_attention, refine_pool
from xkd.losses.total import total_loss

__all__ = [
    "TeacherCentre",
    "cross_modal_attention",
    "cross_modal_distillation",
    "distillation_monitors",
    "masked_reconstruction_loss",
    "mmd_rbf",
    "normalized_patch_targets",
    "refine_pool",
    "teacher_probabilities",
    "total_loss",
]
