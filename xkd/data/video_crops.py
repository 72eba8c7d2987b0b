"""The video views cut from each clip's decoded window, batched on the training device
(docs/method.md §1.3-1.4).

The loaders stop at the decode: each clip's window (32 frames) as the decoder's uint8 plane
groups (PyAV: luma (T, 1, H, W) and chroma (T, 2, h, w); DALI's decoders: RGB (T, 3, H, W)), padded
to the batch's largest frame, with each clip's true plane sizes and each sample's relative crop
boxes and local frame offsets. :func:`crop_video_views` then cuts every view of the batch:

* each box is placed on the luma's pixels with its edges on the chroma's grid (:func:`snap_boxes`:
  one picture for every plane, never a luma pixel off in the chroma);
* the crop and its antialiased bilinear resize (torchvision's ``resized_crop(..., antialias=True)``,
  i.e. PIL's triangle filter) is separable, so a view is two matrix products per plane,
  ``rows @ frames @ columns.T``, with zeros outside the box (:func:`resize_matrices`); a batch of
  views is one batched product per plane group, whatever the boxes' sizes. The chroma is
  upsampled by the same resize, never in a step of its own.

In a loader these crops were 3-4 ms of CPU per sample, a quarter of its cost and most of it at
``samples_per_decode`` 4 (BENCHMARKS.md, "Crops on the device"); a clip's window is also fewer
bytes to copy and move than its cropped views. The results are float (the values a uint8 resize
would round), in the planes' colour space; :mod:`xkd.data.video_finish` goes on from there.
:func:`xkd.data.torch_views.crop_planes` is the same crop one view at a time (the definition the
tests hold this to).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xkd.data.video_decode import DecodedWindow
from xkd.data.view_params import ClipViewParams

# Crop edges lie on even luma pixels: the chroma grid of 4:2:0 video, whether the decoder delivers
# its planes (PyAV) or RGB (DALI, NVDEC), so a sample's views are the same crops either way.
CROP_GRID = 2

# What the loaders deliver for the crops: per clip, its plane groups (by decoder: YUV or RGB) and
# their true sizes ("video_plane_size"); per sample, the boxes and offsets of its ClipViewParams.
YUV_PLANE_KEYS = ("video_luma", "video_chroma")
RGB_PLANE_KEYS = ("video_rgb",)
VIDEO_CROP_KEYS = ("video_global_box", "video_local_offset", "video_local_box")


def crop_param_tensors(params: ClipViewParams) -> dict[str, torch.Tensor]:
    """One sample's crop parameters (the loaders' ``VIDEO_CROP_KEYS`` entries)."""
    return {
        "video_global_box": torch.from_numpy(np.asarray(params.global_box, dtype=np.float32)),
        "video_local_offset": torch.from_numpy(np.asarray(params.local_offsets, dtype=np.int64)),
        "video_local_box": torch.from_numpy(np.asarray(params.local_boxes, dtype=np.float32)),
    }


def plane_sizes(windows: Sequence[torch.Tensor]) -> torch.Tensor:
    """A clip's plane groups (T, C_g, H_g, W_g) -> their sizes (G, 2) int64 (``video_plane_size``)."""
    return torch.tensor([list(window.shape[-2:]) for window in windows], dtype=torch.int64)


def plane_keys(batch: dict) -> tuple[str, ...]:
    """The plane-group keys of a loader batch (YUV from PyAV, RGB from DALI's decoders)."""
    return YUV_PLANE_KEYS if YUV_PLANE_KEYS[0] in batch else RGB_PLANE_KEYS


def pad_planes(windows: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """One plane group of each clip of a batch, (T, C, H_i, W_i) uint8 each, stacked into one
    (clips, T, C, max H, max W) tensor, zeros where a clip is smaller (the crops never read there)."""
    height = max(window.shape[-2] for window in windows)
    width = max(window.shape[-1] for window in windows)
    if out is None:
        out = windows[0].new_empty((len(windows), *windows[0].shape[:2], height, width))
    for clip, window in enumerate(windows):
        h, w = window.shape[-2:]
        out[clip, ..., :h, :w] = window
        _zero_margins(out[clip], h, w)
    return out


def _zero_margins(planes: torch.Tensor, height: int, width: int) -> None:
    """Zeros outside the top-left (height, width) of a clip's padded planes (only where the clip is
    smaller than the batch's largest frame)."""
    planes[..., height:, :] = 0
    planes[..., :height, width:] = 0


def pad_windows(windows: Sequence[DecodedWindow]) -> dict[str, torch.Tensor]:
    """The YUV plane groups of a batch (``YUV_PLANE_KEYS``, as :func:`pad_planes` pads them) and
    "video_plane_size", from each clip's decoded frames copied once, straight out of the decoder's
    buffers (:class:`~xkd.data.video_decode.DecodedWindow`): no window arrays in between."""
    sizes = torch.tensor([window.plane_sizes() for window in windows], dtype=torch.int64)  # (clips, 2, 2)
    count = windows[0].count
    batch = {}
    for group, (key, channels) in enumerate(zip(YUV_PLANE_KEYS, (1, 2))):
        height, width = (int(size) for size in sizes[:, group].max(dim=0).values)
        batch[key] = torch.empty((len(windows), count, channels, height, width), dtype=torch.uint8)
    luma, chroma = (batch[key].numpy() for key in YUV_PLANE_KEYS)
    for clip, window in enumerate(windows):
        window.copy_into(luma[clip], chroma[clip])
        for group, key in enumerate(YUV_PLANE_KEYS):
            _zero_margins(batch[key][clip], *sizes[clip, group].tolist())
    batch["video_plane_size"] = sizes
    return batch


def subsampling(sizes: torch.Tensor) -> torch.Tensor:
    """True plane sizes (N, G, 2) (the first group: luma or RGB) -> each group's (N, G, 2) int64
    subsampling factor against the first (4:2:0 chroma: 2; odd sizes round, e.g. 97 rows -> 49)."""
    return (sizes[:, :1].double() / sizes).round().long()


def snap_boxes(boxes: torch.Tensor, sizes: torch.Tensor, factors: torch.Tensor, grid: int = CROP_GRID
               ) -> torch.Tensor:
    """Relative boxes (N, 4) (top, left, bottom, right) on frames whose plane groups have the true
    sizes ``sizes`` (N, G, 2) and ``factors`` (:func:`subsampling`) -> (N, 4) int64 pixel edges on the
    first group, on multiples of ``grid`` and of the most subsampled plane's factor, at least one grid
    cell, inside the frame (an odd size's last row or column left out). Python's round-half-even, as
    :func:`xkd.data.torch_views.crop_planes`."""
    height, width = sizes[:, 0, 0].double(), sizes[:, 0, 1].double()
    grid_y = factors[..., 0].amax(dim=1).clamp(min=grid).double()
    grid_x = factors[..., 1].amax(dim=1).clamp(min=grid).double()
    boxes = boxes.to(torch.float64)
    top = grid_y * torch.div((boxes[:, 0] * height).round(), grid_y, rounding_mode="floor")
    bottom = grid_y * torch.div((boxes[:, 2] * height).round(), grid_y, rounding_mode="floor")
    left = grid_x * torch.div((boxes[:, 1] * width).round(), grid_x, rounding_mode="floor")
    right = grid_x * torch.div((boxes[:, 3] * width).round(), grid_x, rounding_mode="floor")
    last_y = grid_y * torch.div(height, grid_y, rounding_mode="floor")
    last_x = grid_x * torch.div(width, grid_x, rounding_mode="floor")
    top, left = torch.minimum(top, last_y - grid_y), torch.minimum(left, last_x - grid_x)
    bottom = torch.minimum(torch.maximum(bottom, top + grid_y), last_y)
    right = torch.minimum(torch.maximum(right, left + grid_x), last_x)
    return torch.stack([top, left, bottom, right], dim=1).long()


def resize_matrices(start: torch.Tensor, stop: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """Per view, the (size, length) matrix M with ``M @ x`` = the span [start, stop) of a
    length-``length`` signal x resized to ``size`` samples by antialiased bilinear interpolation
    (PyTorch's ``interpolate(..., mode="bilinear", antialias=True)``, PIL's triangle filter): output
    i is centred at (i + 0.5) * scale in the span (scale = span / size), and weighs the span's
    samples by a triangle of half-width max(scale, 1), normalised over the span (the borders).
    ``start``, ``stop``: (N,) int64 -> (N, size, length) float32."""
    span = (stop - start).to(torch.float64)
    scale = span / size
    support = scale.clamp(min=1.0)  # widened when downscaling: that is the antialiasing
    centre = scale[:, None] * (torch.arange(size, device=start.device, dtype=torch.float64) + 0.5)  # (N, size)
    position = torch.arange(length, device=start.device, dtype=torch.float64) - start[:, None]  # (N, length)
    distance = (position[:, None, :] + 0.5 - centre[:, :, None]) / support[:, None, None]
    inside = (position >= 0) & (position < span[:, None])
    weights = (1 - distance.abs()).clamp(min=0) * inside[:, None, :]
    return (weights / weights.sum(dim=2, keepdim=True)).float()


def crop_groups(groups: Sequence[torch.Tensor], sizes: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Views cut from frames: ``groups`` (N, T, C_g, H_g, W_g) uint8 each (N windows, padded),
    ``sizes`` (N, G, 2) their true sizes, ``boxes`` (N k, 4) relative, k views per window next to
    each other -> float32 (N k, sum C_g, T, S, S), each group cropped to the same picture
    (:func:`snap_boxes`) and resized to ``size``. A window is read once for its k views."""
    windows = len(groups[0])
    repeats = len(boxes) // windows
    device = groups[0].device
    sizes = sizes.to(device).repeat_interleave(repeats, dim=0)  # per view
    factors = subsampling(sizes)
    edges = snap_boxes(boxes.to(device), sizes, factors)  # luma pixels
    out = []
    for group, group_factors in zip(groups, factors.unbind(1)):
        factor_y, factor_x = group_factors.unbind(1)
        rows = resize_matrices(edges[:, 0] // factor_y, edges[:, 2] // factor_y, size, group.shape[-2])
        columns = resize_matrices(edges[:, 1] // factor_x, edges[:, 3] // factor_x, size, group.shape[-1])
        # Rows first, then columns: two batched matrix products over every frame and channel of a
        # window, for each of its k views (no copy of the window per view).
        view = torch.einsum("nksh,ntchw->nktcsw", rows.unflatten(0, (windows, repeats)), group.float())
        out.append(torch.einsum("nktcsw,nkqw->nktcsq", view, columns.unflatten(0, (windows, repeats))).flatten(0, 1))
    return torch.cat(out, dim=2).transpose(1, 2)


def crop_video_views(groups: Sequence[torch.Tensor], plane_size: torch.Tensor, global_box: torch.Tensor,
                     local_offset: torch.Tensor, local_box: torch.Tensor, global_size: int, local_size: int,
                     local_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's video views from its clips' windows.

    ``groups``: the clips' plane groups, (clips, Tg, C_g, H_g, W_g) uint8 each (``pad_planes``);
    ``plane_size`` (clips, G, 2) their true sizes; per sample (B = clips x k, a clip's k samples
    next to each other): ``global_box`` (B, 4), ``local_offset`` (B, n_v) frame offsets in the window,
    ``local_box`` (B, n_v, 4). Returns float32 video_global (B, C, Tg, S, S) and video_local
    (B, n_v, C, Tl, s, s), C = sum C_g, in the planes' colour space and range (0..255)."""
    clips, samples = len(groups[0]), len(global_box)
    if samples % clips:
        raise ValueError(f"{samples} samples from {clips} clips: expected a whole number of samples per clip")
    device = groups[0].device
    video_global = crop_groups(groups, plane_size, global_box, global_size)
    # Each local view reads its own Tl frames: gathered per view (Tl is a quarter of the window).
    n_v = local_offset.shape[1]
    frames = local_offset.to(device).long().reshape(-1, 1) + torch.arange(local_frames, device=device)  # (B n_v, Tl)
    clip_of_view = torch.arange(clips, device=device).repeat_interleave(samples // clips * n_v)[:, None]
    video_local = crop_groups([g[clip_of_view, frames] for g in groups],
                              plane_size.to(device).repeat_interleave(samples // clips * n_v, dim=0),
                              local_box.reshape(-1, 4), local_size)
    return video_global, video_local.unflatten(0, (samples, n_v))
