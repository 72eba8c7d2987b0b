"""The video views cut on the training device (xkd/data/video_crops.py): each equals the per-view
definition (torchvision's antialiased ``resized_crop`` of xkd.data.torch_views.crop_planes) on
the unpadded planes, whatever the padding, the batch's other clips and the samples per clip."""
import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from xkd.data.torch_views import crop_planes
from xkd.data.video_crops import (crop_groups, crop_video_views, pad_planes, plane_sizes, resize_matrices,
                                  snap_boxes, subsampling)


def random_box(rng: np.random.Generator) -> np.ndarray:
    (top, bottom), (left, right) = np.sort(rng.uniform(0, 1, 2)), np.sort(rng.uniform(0, 1, 2))
    return np.array([top, left, bottom, right], dtype=np.float32)


def yuv420(rng: np.random.Generator, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 4:2:0 planes (odd sizes round the chroma up, as decoders do)."""
    def plane(channels, h, w):
        return torch.from_numpy(rng.integers(0, 256, (frames, channels, h, w), dtype=np.uint8))
    return plane(1, height, width), plane(2, (height + 1) // 2, (width + 1) // 2)


def test_resize_matrix_is_torchs_antialiased_bilinear():
    """Down (3.4x, 1.3x), up (0.3x) and equal sizes, spans at the borders and inside: the matrix
    times a signal equals ``interpolate(antialias=True)`` of the span; an equal-size span is the
    identity; rows sum to 1."""
    signal = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for start, stop, size in [(0, 200, 59), (13, 159, 112), (7, 37, 96), (0, 96, 96), (150, 200, 112), (4, 6, 16)]:
        matrix = resize_matrices(torch.tensor([start]), torch.tensor([stop]), size, 200)[0].double()
        want = nnf.interpolate(signal[start:stop][None, None, None], size=(1, size), mode="bilinear",
                               antialias=True, align_corners=False)[0, 0, 0]
        torch.testing.assert_close(matrix @ signal, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(matrix.sum(dim=1), torch.ones(size, dtype=torch.float64))
        assert (matrix[:, :start] == 0).all() and (matrix[:, stop:] == 0).all()  # nothing read outside the span
    identity = resize_matrices(torch.tensor([10]), torch.tensor([106]), 96, 200)[0]
    assert torch.equal(identity, torch.eye(200)[10:106])


def test_snapped_boxes_are_crop_planes_edges():
    """Edges on even luma pixels (4:2:0), at least one cell, inside the frame (odd sizes leave their
    last row out), as the per-view crop places them: the batched crop of a 1-pixel-wide box and of
    boxes at every border cuts what crop_planes cuts."""
    sizes = torch.tensor([[[63, 91], [32, 46]]] * 4)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.99, 0.99, 1.0, 1.0], [0.11, 0.27, 0.6, 0.83]])
    edges = snap_boxes(boxes, sizes, subsampling(sizes))
    assert edges[0].tolist() == [0, 0, 62, 90] and edges[1].tolist() == [32, 46, 34, 48]
    assert edges[2].tolist() == [60, 88, 62, 90]
    assert (edges % 2 == 0).all()
    rng = np.random.default_rng(1)
    luma, chroma = yuv420(rng, 2, 63, 91)
    got = crop_groups([luma[None].expand(4, -1, -1, -1, -1), chroma[None].expand(4, -1, -1, -1, -1)], sizes, boxes,
                      16)
    for view, box in enumerate(boxes.numpy()):
        want = crop_planes((luma.float(), chroma.float()), box, 16).transpose(0, 1)
        torch.testing.assert_close(got[view], want, atol=2e-3, rtol=0)


@pytest.mark.parametrize("samples_per_clip", [1, 3])
def test_a_batch_of_clips_of_different_sizes_equals_the_per_view_crops(samples_per_clip):
    """Three clips (landscape, portrait, odd sizes) padded into one tensor with garbage (255) where
    each is smaller; every sample's global view and each local view (its frames at its offset) equal
    crop_planes on that clip's own planes: float planes to float precision, and the uint8 crop
    (torchvision's integer kernel, which rounds) within one grey level."""
    rng = np.random.default_rng(2)
    clips = [yuv420(rng, 8, 48, 86), yuv420(rng, 8, 90, 50), yuv420(rng, 8, 57, 71)]
    groups = []
    for planes in zip(*clips):
        pad = torch.full((len(clips), 8, planes[0].shape[1], 92, 92), 255, dtype=torch.uint8)
        groups.append(pad_planes(planes, pad))
    sizes = torch.stack([plane_sizes(clip) for clip in clips])
    samples = len(clips) * samples_per_clip
    global_box = torch.from_numpy(np.stack([random_box(rng) for _ in range(samples)]))
    local_offset = torch.from_numpy(rng.integers(0, 5, (samples, 2)))
    local_box = torch.from_numpy(np.stack([[random_box(rng) for _ in range(2)] for _ in range(samples)]))
    video_global, video_local = crop_video_views(groups, sizes, global_box, local_offset, local_box, 24, 12, 4)
    assert video_global.shape == (samples, 3, 8, 24, 24) and video_local.shape == (samples, 2, 3, 4, 12, 12)
    for sample in range(samples):
        planes = clips[sample // samples_per_clip]
        want = crop_planes([p.float() for p in planes], global_box[sample].numpy(), 24).transpose(0, 1)
        torch.testing.assert_close(video_global[sample], want, atol=2e-3, rtol=0)
        rounded = crop_planes(planes, global_box[sample].numpy(), 24).transpose(0, 1).float()
        assert (video_global[sample] - rounded).abs().max() <= 1.0 + 1e-3
        for v in range(2):
            start = int(local_offset[sample, v])
            frames = [p[start:start + 4].float() for p in planes]
            want = crop_planes(frames, local_box[sample, v].numpy(), 12).transpose(0, 1)
            torch.testing.assert_close(video_local[sample, v], want, atol=2e-3, rtol=0)


def test_rgb_frames_are_one_group():
    """DALI's decoders deliver RGB: one plane group of three channels, cut like the luma."""
    rng = np.random.default_rng(3)
    frames = torch.from_numpy(rng.integers(0, 256, (1, 4, 3, 40, 60), dtype=np.uint8))
    box = torch.tensor([[0.1, 0.2, 0.8, 0.7]])
    video_global, video_local = crop_video_views([frames], torch.tensor([[[40, 60]]]), box, torch.tensor([[1]]),
                                                 box[:, None], 16, 8, 2)
    want = crop_planes((frames[0].float(),), box[0].numpy(), 16).transpose(0, 1)
    torch.testing.assert_close(video_global[0], want, atol=2e-3, rtol=0)
    want = crop_planes((frames[0, 1:3].float(),), box[0].numpy(), 8).transpose(0, 1)
    torch.testing.assert_close(video_local[0, 0], want, atol=2e-3, rtol=0)


def test_samples_must_be_whole_clips():
    luma = torch.zeros(2, 4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="3 samples from 2 clips"):
        crop_video_views([luma], torch.tensor([[[8, 8]]] * 2), torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.long),
                         torch.zeros(3, 1, 4), 4, 4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_crops_on_the_gpu_match_the_cpu():
    rng = np.random.default_rng(4)
    luma, chroma = yuv420(rng, 8, 64, 86)
    box = torch.from_numpy(np.stack([random_box(rng) for _ in range(2)]))
    args = (torch.tensor([[[64, 86], [32, 43]]]), box, torch.tensor([[0], [3]]), box[:, None], 32, 16, 4)
    on_cpu = crop_video_views([luma[None], chroma[None]], *args)
    on_gpu = crop_video_views([luma[None].cuda(), chroma[None].cuda()], *args)
    for got, want in zip(on_gpu, on_cpu):
        torch.testing.assert_close(got.cpu(), want, atol=1e-2, rtol=0)
