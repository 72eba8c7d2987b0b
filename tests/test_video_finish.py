"""The batched video finishing (xkd/data/video_finish.py) against torchvision's ops, view by view."""
import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

from xkd.data.video_finish import blur_kernels, color_jitter, finish_video, gaussian_blur, hsv_to_rgb, rgb_to_hsv
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
