"""Token geometry at the paper's view sizes (docs/method.md §2) and position-embedding interpolation."""
import pytest
import torch

from xkd.models import global_grids
from xkd.models.decoder import MaskedDecoder
from xkd.models.position import PositionEmbedding
from xkd.models.xkd import build_encoders


@pytest.fixture(scope="module")
def paper_encoders():
    from xkd.config import config_from_dict

    config = config_from_dict({"model": {"video_encoder": "tiny", "audio_encoder": "tiny",
                                         "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                                         "head": {"hidden_dim": 64, "bottleneck_dim": 32, "out_dim": 128}}})
    torch.manual_seed(0)
    video, audio = build_encoders(config)
    return config, video, audio


def test_paper_grids(paper_encoders):
    config, _, _ = paper_encoders
    assert global_grids(config) == ((8, 7, 7), (20, 28))
    assert config.views.audio_global_frames == 448 and config.views.audio_local_frames == 112


@torch.no_grad()
def test_video_token_counts(paper_encoders):
    config, video, _ = paper_encoders
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(2, 3, 32, 112, 112, generator=g)
    assert video.patch_embed.grid(clip.shape) == (8, 7, 7)
    assert video.patch_embed.patch_dim == 3072
    assert video.patch_embed(clip).shape == (2, 392, 64)
    full = video(clip)
    assert full.tokens.shape == (2, 1 + 392, 64) and full.mask is None
    masked = video(clip, mask_ratio=config.model.video_mask_ratio)
    assert masked.tokens.shape == (2, 1 + 59, 64)
    assert masked.mask.shape == (2, 392) and masked.mask.sum(dim=1).tolist() == [333.0, 333.0]
    local = video(torch.randn(2, 3, 8, 96, 96, generator=g), return_attention=True)
    assert local.grid == (2, 6, 6) and local.tokens.shape == (2, 1 + 72, 64)
    assert local.attention.shape == (2, 4, 72)


@torch.no_grad()
def test_audio_token_counts(paper_encoders):
    config, _, audio = paper_encoders
    g = torch.Generator().manual_seed(1)
    spec = torch.randn(2, 1, 80, 448, generator=g)
    assert audio.patch_embed.grid(spec.shape) == (20, 28) and audio.patch_embed.patch_dim == 64
    assert audio(spec).tokens.shape == (2, 1 + 560, 64)
    masked = audio(spec, mask_ratio=config.model.audio_mask_ratio, return_attention=True)
    assert masked.tokens.shape == (2, 1 + 112, 64)
    assert masked.mask.sum(dim=1).tolist() == [448.0, 448.0]
    assert masked.attention.shape == (2, 4, 112)  # CLS attention over the visible tokens
    local = audio(torch.randn(2, 1, 80, 112, generator=g))
    assert local.grid == (20, 7) and local.tokens.shape == (2, 1 + 140, 64)
    assert local.pooled().shape == (2, 64)
    assert torch.allclose(local.pooled(), local.tokens[:, 1:].mean(dim=1))  # CLS excluded


@torch.no_grad()
def test_decoder_restores_full_token_grid(paper_encoders):
    config, video, _ = paper_encoders
    decoder = MaskedDecoder(64, (8, 7, 7), 3072, config.model.decoder)
    encoded = video(torch.randn(2, 3, 32, 112, 112), mask_ratio=0.85)
    assert decoder(encoded.tokens, encoded.ids_restore).shape == (2, 392, 3072)


def test_position_table_unchanged_for_the_global_grid():
    torch.manual_seed(0)
    position = PositionEmbedding((8, 7, 7), 16)
    assert position.table.shape == (1, 393, 16)
    assert position((8, 7, 7)) is position.table
    assert position() is position.table


def test_video_trilinear_interpolation_hand_values():
    position = PositionEmbedding((8, 7, 7), 2)
    with torch.no_grad():
        t, h, w = torch.meshgrid(torch.arange(8.0), torch.arange(7.0), torch.arange(7.0), indexing="ij")
        position.table[0, 1:, 0] = (100 * t + 10 * h + w).flatten()
        position.table[0, 1:, 1] = 1.0
    local = position((2, 6, 6))[:, 1:]
    assert local.shape == (1, 72, 2)
    # half-pixel sampling (align_corners=False): t 8 -> 2 samples source 4i + 1.5; 7 -> 6 samples
    # (j + 0.5) * 7 / 6 - 0.5; all inside the grid, so a linear table gives the linear function there
    for index, (i, j, k) in enumerate((i, j, k) for i in range(2) for j in range(6) for k in range(6)):
        expected = 100 * (4 * i + 1.5) + 10 * ((j + 0.5) * 7 / 6 - 0.5) + ((k + 0.5) * 7 / 6 - 0.5)
        assert local[0, index, 0].item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(local[0, :, 1], torch.ones(72))
    with pytest.raises(ValueError, match="rank"):
        position((6, 6))


def test_audio_interpolation_is_along_time_only():
    g = torch.Generator().manual_seed(0)
    position = PositionEmbedding((20, 28), 3)
    with torch.no_grad():
        position.table.copy_(torch.randn(1, 561, 3, generator=g))
    table = position.table[0, 1:].reshape(20, 28, 3)
    local = position((20, 7))[:, 1:].reshape(20, 7, 3)
    # 28 -> 7 frames: output frame j samples source 4j + 1.5, the mean of frames 4j+1 and 4j+2,
    # within the same frequency row
    for f in range(20):
        for j in range(7):
            expected = 0.5 * (table[f, 4 * j + 1] + table[f, 4 * j + 2])
            assert torch.allclose(local[f, j], expected, atol=1e-6)
    # frequency rows are never mixed: a table constant over time keeps each row's value
    with torch.no_grad():
        rows = torch.randn(20, 1, 3, generator=g)
        position.table[0, 1:] = rows.expand(20, 28, 3).reshape(560, 3)
    for frames in (7, 14, 56):
        out = position((20, frames))[:, 1:].reshape(20, frames, 3)
        assert torch.allclose(out, rows.expand(20, frames, 3), atol=1e-6)
    # time size unchanged -> frequency axis values unchanged (the table itself)
    assert torch.equal(position((20, 28)), position.table)
