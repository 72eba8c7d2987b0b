"""XKD networks: patch embeddings, ViT encoders, MAE decoders, projector heads, students and teachers."""
from xkd.models.xkd import XKD, TeacherTargets, XKDStudent, XKDTeacher, global_grids, teacher_views

__all__ = ["XKD", "TeacherTargets", "XKDStudent", "XKDTeacher", "global_grids", "teacher_views"]
