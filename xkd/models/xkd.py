"""The XKD model: students (encoder + MAE decoder + head per modality) and EMA teachers.

``XKDStudent`` holds every trainable parameter and is what DeepSpeed wraps.
``XKDTeacher`` holds the EMA copies and the KD centres; it runs without gradients.
``XKD`` joins them: ``XKD(batch, ...)`` returns the total loss (paper eq. 12) and every
component and monitor as a dict of tensors (the trainer logs every key). The method, with
shapes and every deviation from paper and reference code, is docs/method.md. A training loop may call the two halves
itself (teacher outside the DeepSpeed engine, student inside); the computation is the same.

Batch layout (the loaders' batches after the trainer's ``xkd.data.batch_finish.BatchFinisher``):
    video_global (B, 3, T, H, W)          audio_global (B, 1, F, T_a)
    video_local  (B, n_v, 3, t, h, w)     audio_local  (B, n_a, 1, F, t_a)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from xkd.config import XKDConfig
from xkd.losses.distillation import (TeacherCentre, cross_modal_distillation, distillation_monitors, spread_monitors,
                                    teacher_probabilities)
from xkd.losses.mmd import head_output_monitors, mmd_rbf
from xkd.losses.reconstruction import masked_reconstruction_loss, normalized_patch_targets
from xkd.losses.refine import cross_modal_attention, refine_pool
from xkd.losses.total import reduce_pair, total_loss
from xkd.models.decoder import MaskedDecoder
from xkd.models.encoder import ModalityEncoder, build_blocks
from xkd.models.head import ProjectorHead
from xkd.models.patches import AudioPatchEmbedding, VideoPatchEmbedding
from xkd.models.sizes import ENCODER_SIZES


def global_grids(config: XKDConfig) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """Token grids of the global views: (8, 7, 7) video and (20, 28) audio at paper settings."""
    m, v = config.model, config.views
    video = (v.video_global_frames // m.video_tubelet, v.video_global_size // m.video_patch,
             v.video_global_size // m.video_patch)
    audio = (v.mel_bins // m.audio_patch_freq, v.audio_global_frames // m.audio_patch_time)
    return video, audio


def flatten_views(local: torch.Tensor) -> torch.Tensor:
    """(B, n, ...) -> (n*B, ...) ordered view-major, matching the teacher target repetition."""
    return local.transpose(0, 1).flatten(0, 1)


def build_encoders(config: XKDConfig) -> tuple[ModalityEncoder, ModalityEncoder]:
    m = config.model
    video_size, audio_size = ENCODER_SIZES[m.video_encoder], ENCODER_SIZES[m.audio_encoder]
    video_grid, audio_grid = global_grids(config)
    video_blocks = build_blocks(video_size, m.drop_path)
    # MAS and MATS share the student's transformer blocks between modalities (paper Table S5).
    audio_blocks = video_blocks if m.variant in ("mas", "mats") else build_blocks(audio_size, m.drop_path)
    video = ModalityEncoder(VideoPatchEmbedding(video_size.embed_dim, m.video_tubelet, m.video_patch), video_grid,
                            video_size, video_blocks)
    audio = ModalityEncoder(AudioPatchEmbedding(audio_size.embed_dim, m.audio_patch_freq, m.audio_patch_time),
                            audio_grid, audio_size, audio_blocks)
    return video, audio


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm) and sub.elementwise_affine:
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


@dataclass
class TeacherTargets:
    """What the teachers hand to the students for one batch (all without gradient)."""

    video_probs: torch.Tensor  # (B, K) centred, sharpened P(f_t^v), eq. 10
    audio_probs: torch.Tensor  # (B, K)
    teacher_mmd: torch.Tensor  # scalar MMD(f_t^v, f_t^a), the teacher half of eq. 9
    video_weights: torch.Tensor  # (B, N_v) head-averaged cross-modal attention (refine weights)
    audio_weights: torch.Tensor  # (B, N_a)


@dataclass
class Reconstruction:
    """A masked autoencoder's view of one global view, in the input's space (for pictures)."""

    original: torch.Tensor  # (B, C, ...) the input view
    mask: torch.Tensor  # (B, C, ...) 1 where the input was masked (hidden from the encoder)
    prediction: torch.Tensor  # (B, C, ...) the decoder's output for every patch, un-normalised
    grid: tuple[int, ...]  # token grid of the view


class XKDStudent(nn.Module):
    """Students and masked autoencoders of both modalities: every trainable parameter."""

    def __init__(self, config: XKDConfig):
        super().__init__()
        self.config = config
        m = config.model
        self.video_encoder, self.audio_encoder = build_encoders(config)
        video_grid, audio_grid = global_grids(config)
        self.video_decoder = MaskedDecoder(self.video_encoder.embed_dim, video_grid,
                                           self.video_encoder.patch_embed.patch_dim, m.decoder)
        self.audio_decoder = MaskedDecoder(self.audio_encoder.embed_dim, audio_grid,
                                           self.audio_encoder.patch_embed.patch_dim, m.decoder)
        self.video_head = ProjectorHead(self.video_encoder.embed_dim, m.head)
        self.audio_head = ProjectorHead(self.audio_encoder.embed_dim, m.head)
        for part in (self.video_encoder, self.audio_encoder, self.video_decoder, self.audio_decoder):
            init_mae_weights(part)

    def _modality(self, encoder: ModalityEncoder, decoder: MaskedDecoder, head: ProjectorHead,
                  global_view: torch.Tensor, local_views: torch.Tensor, mask_ratio: float):
        """Masked reconstruction loss (eq. 1) and head outputs f_s = [head(global); head(locals)]."""
        encoded = encoder(global_view, mask_ratio=mask_ratio)
        prediction = decoder(encoded.tokens, encoded.ids_restore)
        target = encoder.patch_embed.patchify(global_view)
        if self.config.loss.norm_pix_loss:
            target = normalized_patch_targets(target)
        recon = masked_reconstruction_loss(prediction, target, encoded.mask)
        local = encoder(flatten_views(local_views))
        pooled = torch.cat([encoded.pooled(), local.pooled()], dim=0)
        return recon, head(pooled), encoded, prediction

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, torch.Tensor]) -> dict[str, Reconstruction]:
        """Mask, encode and decode the global views as in training ("video", "audio"); no loss.

        With ``loss.norm_pix_loss`` the decoder predicts per-patch normalised pixels; they are
        mapped back with each original patch's mean and standard deviation (as MAE's figures do).
        """
        m = self.config.model
        out = {}
        for name, encoder, decoder, ratio in (("video", self.video_encoder, self.video_decoder, m.video_mask_ratio),
                                              ("audio", self.audio_encoder, self.audio_decoder, m.audio_mask_ratio)):
            view = batch[f"{name}_global"]
            embed = encoder.patch_embed
            encoded = encoder(view, mask_ratio=ratio)
            prediction = decoder(encoded.tokens, encoded.ids_restore)
            if self.config.loss.norm_pix_loss:
                patches = embed.patchify(view)
                std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
                prediction = prediction * std + patches.mean(dim=-1, keepdim=True)
            token_mask = encoded.mask.unsqueeze(-1).expand(-1, -1, embed.patch_dim)
            out[name] = Reconstruction(original=view, mask=embed.unpatchify(token_mask, encoded.grid),
                                       prediction=embed.unpatchify(prediction, encoded.grid), grid=encoded.grid)
        return out

    def forward(self, batch: dict[str, torch.Tensor], targets: TeacherTargets) -> dict[str, torch.Tensor]:
        m, loss_config = self.config.model, self.config.loss
        recon_video, student_video, _, _ = self._modality(
            self.video_encoder, self.video_decoder, self.video_head,
            batch["video_global"], batch["video_local"], m.video_mask_ratio)
        recon_audio, student_audio, _, _ = self._modality(
            self.audio_encoder, self.audio_decoder, self.audio_head,
            batch["audio_global"], batch["audio_local"], m.audio_mask_ratio)

        # Each pair summed (paper) or averaged (reference code): loss.pair_reduction, docs/method.md §4.8.
        reduction = loss_config.pair_reduction
        # loss.recon_modalities=video (recon_v arm): the audio AE stays in the graph at weight 0.
        recon_audio_loss = recon_audio * 0.0 if loss_config.recon_modalities == "video" else recon_audio
        ae = reduce_pair(recon_video, recon_audio_loss, reduction)  # eq. 2
        student_mmd = mmd_rbf(student_video, student_audio, loss_config.mmd_gammas, loss_config.mmd_distance_scale)
        da = reduce_pair(student_mmd, targets.teacher_mmd, reduction)  # eq. 9; the teacher term is a constant here
        kd_terms = cross_modal_distillation(targets.video_probs, targets.audio_probs, student_video,
                                            student_audio, loss_config.student_temperature)
        kd = reduce_pair(kd_terms["kd_video_to_audio"], kd_terms["kd_audio_to_video"], reduction)  # eq. 11
        loss = total_loss(ae, da, kd, loss_config)
        return {
            "loss": loss,
            "ae": ae.detach(),
            "recon_video": recon_video.detach(),
            "recon_audio": recon_audio.detach(),
            "da": da.detach(),
            "mmd_student": student_mmd.detach(),
            "mmd_teacher": targets.teacher_mmd,
            **{name: value.detach() for name, value in kd_terms.items()},
            "kd": kd.detach(),
            **distillation_monitors(targets.video_probs, targets.audio_probs, kd_terms),
            # Collapse proper: does a distribution still depend on the sample (0: one output for all)?
            **spread_monitors(targets.video_probs, targets.audio_probs, student_video.detach(),
                              student_audio.detach(), loss_config.student_temperature),
            # Where the MMD kernel acts (docs/method.md §4.6): within-modality cosines, cross-modal distance.
            **head_output_monitors(student_video.detach(), student_audio.detach(), loss_config.mmd_distance_scale),
        }


class XKDTeacher(nn.Module):
    """EMA teachers (encoder + head per modality) and their KD centres. Never receives gradients."""

    def __init__(self, student: XKDStudent):
        super().__init__()
        self.config = student.config
        parts = nn.ModuleDict({
            "video_encoder": student.video_encoder, "audio_encoder": student.audio_encoder,
            "video_head": student.video_head, "audio_head": student.audio_head,
        })
        # deepcopy keeps sharing inside the copied set: MATS teachers share blocks like their students.
        copied = copy.deepcopy(parts)
        if self.config.model.variant == "mas":
            # MAS: shared student blocks, modality-specific teacher blocks (two separate copies).
            copied["audio_encoder"].blocks = copy.deepcopy(student.audio_encoder.blocks)
        self.video_encoder: ModalityEncoder = copied["video_encoder"]
        self.audio_encoder: ModalityEncoder = copied["audio_encoder"]
        self.video_head: ProjectorHead = copied["video_head"]
        self.audio_head: ProjectorHead = copied["audio_head"]
        out_dim = self.config.model.head.out_dim
        self.video_centre = TeacherCentre(out_dim, self.config.loss.center_momentum)
        self.audio_centre = TeacherCentre(out_dim, self.config.loss.center_momentum)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> XKDTeacher:
        """Teachers are fixed targets: always in inference mode, so the students' stochastic
        depth (``model.drop_path``), copied into the teacher blocks, never drops teacher blocks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, video: torch.Tensor, audio: torch.Tensor, video_temperature: float, audio_temperature: float,
                update_centres: bool = True) -> TeacherTargets:
        """Teacher targets for one batch (paper Algorithm 1, lines 11-16, and eq. 10; docs/method.md §4.2-4.4, §4.7).

        The probabilities use the centres from before this batch; the centres are then updated.
        """
        energy = self.config.model.refine_energy
        video_out = self.video_encoder(video, return_attention=True)
        audio_out = self.audio_encoder(audio, return_attention=True)
        video_cross = cross_modal_attention(video_out.attention, audio_out.attention)  # eq. 4
        audio_cross = cross_modal_attention(audio_out.attention, video_out.attention)
        pool = refine_pool if self.config.model.teacher_pool == "refine" else mean_pool  # model.teacher_pool
        teacher_video = self.video_head(pool(video_out.patch_tokens, video_cross, energy))  # eq. 5-6
        teacher_audio = self.audio_head(pool(audio_out.patch_tokens, audio_cross, energy))
        targets = TeacherTargets(
            video_probs=teacher_probabilities(teacher_video, self.video_centre.value, video_temperature),
            audio_probs=teacher_probabilities(teacher_audio, self.audio_centre.value, audio_temperature),
            teacher_mmd=mmd_rbf(teacher_video, teacher_audio, self.config.loss.mmd_gammas,
                                self.config.loss.mmd_distance_scale),
            video_weights=video_cross.mean(dim=1),
            audio_weights=audio_cross.mean(dim=1),
        )
        if update_centres:
            self.video_centre.update(teacher_video)
            self.audio_centre.update(teacher_audio)
        return targets


def mean_pool(tokens: torch.Tensor, cross_attention: torch.Tensor, energy: str = "norm") -> torch.Tensor:
    """The plain mean of the patch tokens (model.teacher_pool=mean: the ablation without refine)."""
    return tokens.mean(dim=1)


def teacher_views(batch: dict[str, torch.Tensor], teacher_view: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The views the teachers encode: the unmasked global views (paper) or the first local views (ref code)."""
    if teacher_view == "global":
        return batch["video_global"], batch["audio_global"]
    return batch["video_local"][:, 0], batch["audio_local"][:, 0]


class XKD(nn.Module):
    """Students + teachers. ``forward`` computes one step's total loss and every logged quantity."""

    def __init__(self, config: XKDConfig):
        super().__init__()
        self.config = config
        self.student = XKDStudent(config)
        self.teacher = XKDTeacher(self.student)

    def forward(self, batch: dict[str, torch.Tensor], video_temperature: float, audio_temperature: float,
                update_centres: bool = True) -> dict[str, torch.Tensor]:
        video, audio = teacher_views(batch, self.config.model.teacher_view)
        targets = self.teacher(video, audio, video_temperature, audio_temperature, update_centres)
        return self.student(batch, targets)
