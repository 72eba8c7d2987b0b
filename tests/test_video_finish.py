"""The batched video finishing (xkd/data/video_finish.py) against torchvision's ops, view by view."""
import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as tvf

from xkd.data.video_finish import (blur_kernels, color_jitter, finish_batch, finish_video, gaussian_blur, hsv_to_rgb,
                                   rgb_to_hsv)
from xkd.data.view_params import color_jitter as draw_color_jitter


def random_views(n: int, frames: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, frames, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def torchvision_view(view: torch.Tensor, color, sigma: float, flip: bool) -> torch.Tensor:
    """One uint8 (3, T, H, W) view through torchvision's functional ops on (T, C, H, W) frames."""
    x = view.permute(1, 0, 2, 3).float() / 255
    brightness, contrast, saturation, hue = (float(v) for v in color)
    x = tvf.adjust_contrast(tvf.adjust_brightness(x, brightness), contrast)
    if saturation > 0:
        x = tvf.adjust_saturation(x, saturation)
    x = tvf.adjust_hue(x, hue)
    if saturation == 0:
        x = tvf.rgb_to_grayscale(x, num_output_channels=3)
    if sigma > 0:
        kernel = 2 * math.ceil(3 * sigma) + 1
        x = tvf.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    if flip:
        x = tvf.horizontal_flip(x)
    x = tvf.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return x.permute(1, 0, 2, 3)


def test_hsv_round_trip_and_known_colours():
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5], [0, 0, 0]])[..., None]
    hsv = rgb_to_hsv(rgb)
    torch.testing.assert_close(hsv[:, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1 / 6, 0.0, 0.0]))
    torch.testing.assert_close(hsv[:, 1, 0], torch.tensor([1.0, 1, 1, 1, 0, 0]))
    torch.testing.assert_close(hsv[:, 2, 0], torch.tensor([1.0, 1, 1, 1, 0.5, 0]))
    x = torch.rand(4, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6, rtol=0)


def test_blur_kernels_are_torchvisions_gaussians():
    taps = blur_kernels(torch.tensor([0.0, 0.5, 2.0]))
    assert taps.shape == (3, 13)
    assert torch.equal(taps[0], (torch.arange(13) == 6).float())
    # sigma 0.5: 2 * ceil(1.5) + 1 = 5 taps, exp(-x^2 / (2 * 0.25)) normalised.
    pdf = torch.exp(-0.5 * (torch.arange(-2.0, 3.0) / 0.5) ** 2)
    torch.testing.assert_close(taps[1, 4:9], pdf / pdf.sum())
    assert taps[1, :4].abs().sum() == 0 and taps[1, 9:].abs().sum() == 0
    torch.testing.assert_close(taps.sum(dim=1), torch.ones(3))


def test_each_view_of_a_batch_equals_torchvision_with_its_own_factors():
    """Jitter (grayscale views included), blur, flip, normalisation with per-view parameters, batched,
    equal each view processed alone by torchvision."""
    rng = np.random.default_rng(5)
    n = 8
    views = random_views(n)
    colors = torch.from_numpy(np.stack([draw_color_jitter(rng, grayscale_probability=0.4).as_array()
                                        for _ in range(n)]))
    colors[0] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # plain grayscale
    colors[1] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # identity
    assert (colors[:, 2] == 0).sum() >= 2
    sigmas = torch.tensor([0.0, 0.3, 2.0, 0.0, 1.1, 0.0, 0.7, 1.9])
    flips = torch.tensor([True, False, True, True, False, False, True, False])
    got = finish_video(views, colors, flips, sigmas)
    assert got.dtype == torch.float32 and got.shape == views.shape
    for i in range(n):
        expected = torchvision_view(views[i], colors[i].tolist(), float(sigmas[i]), bool(flips[i]))
        torch.testing.assert_close(got[i], expected, atol=2e-5, rtol=0, msg=f"view {i}")


def test_contrast_uses_each_frames_mean():
    """Two frames of different brightness keep their own grey mean under a contrast of 0."""
    x = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 0.8)], dim=1)[None]
    out = color_jitter(x, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(out[0, :, 0], torch.full((3, 4, 4), 0.2 * 0.9999), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, :, 1], torch.full((3, 4, 4), 0.8 * 0.9999), atol=1e-4, rtol=0)


def test_blur_of_a_constant_is_the_constant_and_smooths_an_edge():
    flat = torch.full((2, 3, 2, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([1.5, 0.0])), flat)
    edge = torch.zeros(1, 1, 1, 1, 16)
    edge[..., 8:] = 1.0
    edge = edge.expand(1, 1, 1, 16, 16).contiguous()
    blurred = gaussian_blur(edge, torch.tensor([1.0]))
    assert 0 < blurred[0, 0, 0, 0, 7] < 0.5 < blurred[0, 0, 0, 0, 8] < 1


@pytest.mark.parametrize("dtype", [torch.float32])
def test_finish_batch_gives_the_model_inputs(dtype):
    b, n = 2, 3
    batch = {
        "video_global": random_views(b, 4, 8), "video_local": random_views(b * n, 2, 8).unflatten(0, (b, n)),
        "audio_global": torch.randn(b, 1, 8, 10), "audio_local": torch.randn(b, n, 1, 8, 5),
        "video_global_color": torch.tensor([[1.0, 1.0, 1.0, 0.0]] * b), "video_global_flip": torch.tensor([True, False]),
        "video_local_color": torch.tensor([[1.0, 1.0, 1.0, 0.0]] * (b * n)).unflatten(0, (b, n)),
        "video_local_flip": torch.zeros(b, n, dtype=torch.bool), "video_local_blur": torch.zeros(b, n),
        "sample_index": torch.arange(b),
    }
    out = finish_batch(batch, torch.device("cpu"))
    assert set(out) == {"video_global", "video_local", "audio_global", "audio_local"}
    assert all(v.dtype == dtype for v in out.values())
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1, 1)
    plain = (batch["video_global"].float() / 255 - mean) / std
    torch.testing.assert_close(out["video_global"][1], plain[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["video_global"][0], plain[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["video_local"][1, 2], (batch["video_local"][1, 2].float() / 255 - mean) / std,
                               atol=1e-5, rtol=0)
    assert torch.equal(out["audio_local"], batch["audio_local"])
