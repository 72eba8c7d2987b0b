"""Video cuboid and audio patch tokenisation: layout, round trip, equivalence to a strided conv."""
import pytest
import torch
import torch.nn.functional as F

from xkd.models.patches import AudioPatchEmbedding, VideoPatchEmbedding


def test_video_patchify_layout_and_round_trip():
    embed = VideoPatchEmbedding(embed_dim=8, tubelet=2, patch=4)
    video = torch.randn(2, 3, 4, 8, 12)
    tokens = embed.patchify(video)
    grid = embed.grid(video.shape)
    assert grid == (2, 2, 3) and tokens.shape == (2, 12, 2 * 4 * 4 * 3)
    # token (t, h, w) in raster order; its vector laid out (tubelet, patch, patch, channel)
    for b in range(2):
        for t in range(2):
            for h in range(2):
                for w in range(3):
                    index = t * 6 + h * 3 + w
                    for dt in range(2):
                        for dy in range(4):
                            for dx in range(4):
                                for c in range(3):
                                    offset = ((dt * 4 + dy) * 4 + dx) * 3 + c
                                    assert tokens[b, index, offset] == video[b, c, 2 * t + dt, 4 * h + dy, 4 * w + dx]
    assert torch.equal(embed.unpatchify(tokens, grid), video)


def test_audio_patchify_layout_and_round_trip():
    embed = AudioPatchEmbedding(embed_dim=8, patch_freq=4, patch_time=16)
    spec = torch.randn(2, 1, 80, 224)
    tokens = embed.patchify(spec)
    grid = embed.grid(spec.shape)
    assert grid == (20, 14) and tokens.shape == (2, 280, 64)
    for b in range(2):
        for f in (0, 7, 19):
            for t in (0, 5, 13):
                index = f * 14 + t
                expected = spec[b, 0, 4 * f:4 * f + 4, 16 * t:16 * t + 16].reshape(-1)  # (freq, time) layout
                assert torch.equal(tokens[b, index], expected)
    assert torch.equal(embed.unpatchify(tokens, grid), spec)


@torch.no_grad()
def test_linear_embedding_equals_strided_convolutions():
    torch.manual_seed(0)
    video_embed = VideoPatchEmbedding(embed_dim=5, tubelet=2, patch=4)
    video = torch.randn(2, 3, 4, 8, 8)
    weight = video_embed.proj.weight.reshape(5, 2, 4, 4, 3).permute(0, 4, 1, 2, 3)  # (D, C, t, p, p)
    conv = F.conv3d(video, weight, video_embed.proj.bias, stride=(2, 4, 4))  # (B, D, T', H', W')
    assert torch.allclose(video_embed(video), conv.flatten(2).transpose(1, 2), atol=1e-5)
    audio_embed = AudioPatchEmbedding(embed_dim=5, patch_freq=4, patch_time=16)
    spec = torch.randn(2, 1, 8, 32)
    weight = audio_embed.proj.weight.reshape(5, 1, 4, 16)
    conv = F.conv2d(spec, weight, audio_embed.proj.bias, stride=(4, 16))
    assert torch.allclose(audio_embed(spec), conv.flatten(2).transpose(1, 2), atol=1e-5)


def test_shapes_that_do_not_tile_are_rejected():
    with pytest.raises(ValueError, match="does not tile"):
        VideoPatchEmbedding(8, tubelet=4, patch=16).patchify(torch.randn(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="does not tile"):
        VideoPatchEmbedding(8, tubelet=4, patch=16).patchify(torch.randn(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match="does not tile"):
        AudioPatchEmbedding(8).patchify(torch.randn(1, 1, 80, 100))
