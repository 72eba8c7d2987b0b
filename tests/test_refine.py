"""CLS attention (paper eq. 3), cross-modal attention (eq. 4) and refine pooling (eq. 5-6); docs/method.md §4.2-4.4."""
import math

import pytest
import torch

from xkd.losses.refine import cross_modal_attention, other_head_index, refine_pool
from xkd.models.encoder import build_blocks, cls_attention
from xkd.models.sizes import EncoderSize


def _naive_refine(tokens, attention, other, squared=False):
    """Eq. 4-6 with explicit python loops over batch, heads, tokens."""
    batch, heads, n = attention.shape
    m = other.shape[-1]
    dim = tokens.shape[-1]
    result = []
    for b in range(batch):
        w = [0.0] * n
        for h in range(heads):
            other_mean = sum(other[b, h, i].item() for i in range(m)) / m
            own_mean = sum(attention[b, h, j].item() for j in range(n)) / n
            for j in range(n):
                w[j] += attention[b, h, j].item() * other_mean / own_mean / heads
        plain = [sum(tokens[b, j, d].item() for j in range(n)) / n for d in range(dim)]
        weighted = [sum(w[j] * tokens[b, j, d].item() for j in range(n)) / n for d in range(dim)]
        omega = math.sqrt(sum(p * p for p in plain)) / math.sqrt(sum(q * q for q in weighted))
        if squared:
            omega = omega ** 2
        result.append([q * omega for q in weighted])
    return result


def test_hand_computed_single_head():
    a_v = torch.tensor([[[0.2, 0.6]]])
    a_a = torch.tensor([[[0.1, 0.3]]])
    cross = cross_modal_attention(a_v, a_a)
    # mean A_a = 0.2, mean A_v = 0.4: [0.2 * 0.2 / 0.4, 0.6 * 0.2 / 0.4]
    assert cross[0, 0].tolist() == pytest.approx([0.1, 0.3])
    # symmetric for audio: mean A_v = 0.4, mean A_a = 0.2: [0.1 * 0.4 / 0.2, 0.3 * 0.4 / 0.2]
    assert cross_modal_attention(a_a, a_v)[0, 0].tolist() == pytest.approx([0.2, 0.6])
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # weighted mean = [0.05, 0.15], plain mean = [0.5, 0.5]
    # Omega = sqrt(0.5) / sqrt(0.025) = sqrt(20) -> [0.05, 0.15] * 4.4721
    pooled = refine_pool(tokens, cross, "norm")
    assert pooled[0].tolist() == pytest.approx([0.2236068, 0.6708204], rel=1e-6)
    # paper eq. 6: Omega = 0.5 / 0.025 = 20 -> [1.0, 3.0]
    squared = refine_pool(tokens, cross, "squared_norm")
    assert squared[0].tolist() == pytest.approx([1.0, 3.0], rel=1e-6)


@pytest.mark.parametrize("energy", ["norm", "squared_norm"])
def test_matches_closed_form_loops(energy):
    g = torch.Generator().manual_seed(0)
    batch, heads, n, m, dim = 2, 3, 5, 4, 6
    a_v = torch.rand(batch, heads, n, generator=g) + 0.01
    a_a = torch.rand(batch, heads, m, generator=g) + 0.01
    tokens = torch.randn(batch, n, dim, generator=g)
    cross = cross_modal_attention(a_v, a_a)
    assert cross.shape == (batch, heads, n)
    for b in range(batch):
        for h in range(heads):
            for j in range(n):
                expected = a_v[b, h, j].item() * (a_a[b, h].sum().item() / m) / (a_v[b, h].sum().item() / n)
                assert cross[b, h, j].item() == pytest.approx(expected, rel=1e-5)
    pooled = refine_pool(tokens, cross, energy)
    expected = _naive_refine(tokens, a_v, a_a, squared=energy == "squared_norm")
    assert pooled.shape == (batch, dim)
    for b in range(batch):
        assert pooled[b].tolist() == pytest.approx(expected[b], rel=1e-4, abs=1e-6)


def test_norm_energy_preserves_mean_pool_norm_and_squared_is_paper_ratio():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 7, 8, generator=g)
    cross = cross_modal_attention(torch.rand(3, 2, 7, generator=g) + 0.05, torch.rand(3, 2, 9, generator=g) + 0.05)
    plain = tokens.mean(dim=1)
    weights = cross.mean(dim=1)
    weighted = (tokens * weights.unsqueeze(-1)).mean(dim=1)
    pooled = refine_pool(tokens, cross, "norm")
    assert pooled.norm(dim=-1).tolist() == pytest.approx(plain.norm(dim=-1).tolist(), rel=1e-5)
    # direction is that of the weighted mean, not the plain mean
    cos = torch.nn.functional.cosine_similarity(pooled, weighted, dim=-1)
    assert cos.tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    squared = refine_pool(tokens, cross, "squared_norm")
    ratio = plain.norm(dim=-1) ** 2 / weighted.norm(dim=-1) ** 2
    assert (squared / weighted).mean(-1).tolist() == pytest.approx(ratio.tolist(), rel=1e-5)


def test_uniform_attention_gives_plain_mean_pool():
    tokens = torch.randn(2, 6, 4)
    uniform = torch.full((2, 3, 6), 1.0 / 7)
    other = torch.full((2, 3, 9), 1.0 / 10)
    pooled = refine_pool(tokens, cross_modal_attention(uniform, other), "norm")
    assert torch.allclose(pooled, tokens.mean(dim=1), atol=1e-6)


def test_head_mapping_vit_l_video_with_vit_b_audio():
    # docs/method.md §4.3: head h of H is paired with head (h * H_other) // H of the other modality
    assert other_head_index(16, 12).tolist() == [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11]  # 3h // 4
    assert other_head_index(12, 16).tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]  # 4h // 3
    assert other_head_index(12, 12).tolist() == list(range(12))  # equal counts: paired by index


# 4 video heads x 2 tokens, 3 audio heads x 3 tokens (a small stand-in for 16 vs 12 heads)
A_V = torch.tensor([[[0.2, 0.6], [0.1, 0.1], [0.3, 0.1], [0.4, 0.4]]])  # head means 0.4, 0.1, 0.2, 0.4
A_A = torch.tensor([[[0.1, 0.3, 0.2], [0.3, 0.3, 0.3], [0.05, 0.05, 0.05]]])  # head means 0.2, 0.3, 0.05


def test_unpaired_head_counts_hand_computed():
    # video heads 0..3 use audio heads (3h // 4) = 0, 0, 1, 2
    cross = cross_modal_attention(A_V, A_A)
    assert cross[0].tolist() == [
        pytest.approx([0.1, 0.3]),  # [0.2, 0.6] * 0.2 / 0.4
        pytest.approx([0.2, 0.2]),  # [0.1, 0.1] * 0.2 / 0.1
        pytest.approx([0.45, 0.15]),  # [0.3, 0.1] * 0.3 / 0.2
        pytest.approx([0.05, 0.05]),  # [0.4, 0.4] * 0.05 / 0.4
    ]
    # audio heads 0..2 use video heads (4h // 3) = 0, 1, 2
    back = cross_modal_attention(A_A, A_V)
    assert back[0].tolist() == [
        pytest.approx([0.2, 0.6, 0.4]),  # [0.1, 0.3, 0.2] * 0.4 / 0.2
        pytest.approx([0.1, 0.1, 0.1]),  # [0.3, 0.3, 0.3] * 0.1 / 0.3
        pytest.approx([0.2, 0.2, 0.2]),  # [0.05, 0.05, 0.05] * 0.2 / 0.05
    ]


def test_refine_depends_on_the_other_modality_when_head_counts_differ():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # w = mean over heads = [(0.1 + 0.2 + 0.45 + 0.05) / 4, (0.3 + 0.2 + 0.15 + 0.05) / 4] = [0.2, 0.175];
    # with ||mean f|| = sqrt(0.5): pooled = [0.2, 0.175] / ||[0.2, 0.175]|| * sqrt(0.5)
    pooled = refine_pool(tokens, cross_modal_attention(A_V, A_A), "norm")
    assert pooled[0].tolist() == pytest.approx([0.5321521, 0.4656331], rel=1e-6)
    # the audio heads in another order (head means 0.05, 0.3, 0.2): video heads now get factors
    # 0.05, 0.05, 0.3, 0.2 -> cross [0.025, 0.075], [0.05, 0.05], [0.45, 0.15], [0.2, 0.2];
    # w = [0.725 / 4, 0.475 / 4] = [0.18125, 0.11875] -> another direction
    reordered = refine_pool(tokens, cross_modal_attention(A_V, A_A[:, [2, 1, 0]]), "norm")
    assert reordered[0].tolist() == pytest.approx([0.5914673, 0.3875131], rel=1e-6)
    # A per-sample constant factor (what averaging over all the other modality's heads produced)
    # is cancelled by Omega: scaling all audio attention leaves the refined feature unchanged.
    scaled = refine_pool(tokens, cross_modal_attention(A_V, A_A * 2.0), "norm")
    assert torch.allclose(scaled, pooled, atol=1e-7)


@torch.no_grad()
def test_teacher_refine_weights_follow_the_other_modality_with_unequal_heads(tiny_config, random_batch):
    """End to end: small video teacher (6 heads), tiny audio teacher (4 heads). Another audio clip must
    change the video refine weights beyond a per-sample factor (which Omega would cancel)."""
    from xkd.models import XKD

    config = tiny_config(model={"variant": "ms", "video_encoder": "small", "audio_encoder": "tiny"})
    torch.manual_seed(0)
    teacher = XKD(config).teacher
    assert (teacher.video_encoder.num_heads, teacher.audio_encoder.num_heads) == (6, 4)
    batch = random_batch(config, 2)
    video = batch["video_global"]
    first = teacher(video, batch["audio_global"], 0.1, 0.07, update_centres=False)
    other_audio = torch.roll(batch["audio_global"], shifts=1, dims=0) * 3.0 + 1.0
    second = teacher(video, other_audio, 0.1, 0.07, update_centres=False)
    ratio = second.video_weights / first.video_weights  # (B, N_v)
    spread = (ratio.max(dim=1).values - ratio.min(dim=1).values) / ratio.mean(dim=1)
    assert torch.all(spread > 1e-3), spread


def test_unknown_energy_rejected():
    with pytest.raises(ValueError, match="refine energy"):
        refine_pool(torch.randn(1, 2, 3), torch.rand(1, 1, 2), "cube")


def _naive_cls_attention(block, x):
    """softmax(q_cls . k / sqrt(d)) over all N+1 keys from the block's qkv weights, CLS column dropped."""
    norm = block.norm1
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    h = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    weight, bias = block.attn.qkv.weight, block.attn.qkv.bias
    batch, tokens, dim = x.shape
    heads = block.attn.num_heads
    head_dim = dim // heads
    out = torch.zeros(batch, heads, tokens - 1)
    full = torch.zeros(batch, heads, tokens)
    for b in range(batch):
        for hd in range(heads):
            rows_q = slice(hd * head_dim, (hd + 1) * head_dim)
            rows_k = slice(dim + hd * head_dim, dim + (hd + 1) * head_dim)
            q = h[b, 0] @ weight[rows_q].T + bias[rows_q]
            scores = []
            for n in range(tokens):
                k = h[b, n] @ weight[rows_k].T + bias[rows_k]
                scores.append(float((q * k).sum()) / math.sqrt(head_dim))
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            total = sum(exps)
            for n in range(tokens):
                full[b, hd, n] = exps[n] / total
            out[b, hd] = full[b, hd, 1:]
    return out, full


@torch.no_grad()
def test_cls_attention_matches_naive_softmax():
    torch.manual_seed(0)
    (block,) = build_blocks(EncoderSize(embed_dim=16, depth=1, num_heads=4))
    # non-trivial LayerNorm and qkv bias
    block.norm1.weight.normal_(1.0, 0.2)
    block.norm1.bias.normal_(0.0, 0.2)
    block.attn.qkv.bias.normal_(0.0, 0.5)
    block.attn.qkv.weight.mul_(1.5)
    x = torch.randn(2, 6, 16)
    attention = cls_attention(block, x)
    expected, full = _naive_cls_attention(block, x)
    assert attention.shape == (2, 4, 5)
    assert torch.allclose(attention, expected, atol=1e-6)
    assert torch.all(attention > 0)
    sums = attention.sum(dim=-1)
    assert torch.all(sums < 1.0)
    assert torch.allclose(sums, 1.0 - full[:, :, 0], atol=1e-6)  # exactly the CLS column removed
    # the naive attention is the block's own: its CLS row applied to the values reproduces block.attn
    h = block.norm1(x)
    qkv = block.attn.qkv(h)
    values = qkv[..., 32:].reshape(2, 6, 4, 4).transpose(1, 2)  # (B, H, N+1, head_dim)
    mixed = (full.unsqueeze(-1) * values).sum(dim=2).reshape(2, 16)  # heads concatenated
    assert torch.allclose(block.attn.proj(mixed), block.attn(h)[:, 0], atol=1e-5)


def test_teacher_attention_is_cls_attention_of_last_block(tiny_config, random_batch):
    from xkd.models import XKD

    config = tiny_config()
    model = XKD(config)
    batch = random_batch(config, 2)
    encoder = model.teacher.audio_encoder
    with torch.no_grad():
        out = encoder(batch["audio_global"], return_attention=True)
        # rebuild the input of the last block by hand
        x = encoder.patch_embed(batch["audio_global"]) + encoder.position.table[:, 1:]
        cls = encoder.cls_token() + encoder.position()[:, :1]
        h = torch.cat([cls.expand(2, -1, -1), x], dim=1)
        for block in encoder.blocks[:-1]:
            h = block(h)
        expected, _ = _naive_cls_attention(encoder.blocks[-1], h)
    assert out.attention.shape == (2, 4, 280)
    assert torch.allclose(out.attention, expected, atol=1e-6)
