"""MAE-style random masking (docs/method.md §2.3): how many tokens stay, which ones, per sample."""
import pytest
import torch

from xkd.models.masking import num_visible, random_masking


@pytest.mark.parametrize(
    "num_tokens, ratio, keep",
    [
        (392, 0.85, 59),  # video global, paper
        (560, 0.80, 112),  # audio global, paper
        (64, 0.85, 10),  # tiny video: 9.6 -> 10
        (280, 0.80, 56),  # tiny audio
        (100, 0.75, 25),
        (50, 0.90, 5),  # 50 * (1 - 0.9) = 4.999... -> 5, not truncated to 4
        (10, 0.33, 7),  # 6.7 -> 7
    ],
)
def test_keeps_round_n_times_one_minus_ratio(num_tokens, ratio, keep):
    assert num_visible(num_tokens, ratio) == keep
    batch, dim = 3, 2
    tokens = torch.randn(batch, num_tokens, dim)
    visible, mask, ids_restore = random_masking(tokens, ratio, generator=torch.Generator().manual_seed(1))
    assert visible.shape == (batch, keep, dim)
    assert mask.shape == (batch, num_tokens) and ids_restore.shape == (batch, num_tokens)
    assert torch.all((mask == 0) | (mask == 1))
    assert mask.sum(dim=1).tolist() == [float(num_tokens - keep)] * batch


def _indexed_tokens(batch, num_tokens):
    """Token n of sample b carries the values (n, b): its identity can be read back."""
    index = torch.arange(num_tokens, dtype=torch.float32).view(1, -1, 1).expand(batch, -1, 1)
    sample = torch.arange(batch, dtype=torch.float32).view(-1, 1, 1).expand(-1, num_tokens, 1)
    return torch.cat([index, sample], dim=-1)


@pytest.mark.parametrize("num_tokens, ratio", [(392, 0.85), (560, 0.80), (20, 0.5)])
def test_kept_tokens_are_exactly_the_unmasked_ones(num_tokens, ratio):
    batch = 4
    tokens = _indexed_tokens(batch, num_tokens)
    visible, mask, ids_restore = random_masking(tokens, ratio, generator=torch.Generator().manual_seed(2))
    keep = num_visible(num_tokens, ratio)
    for b in range(batch):
        # each visible token comes from its own sample
        assert torch.all(visible[b, :, 1] == b)
        kept = [int(v) for v in visible[b, :, 0].tolist()]
        assert len(set(kept)) == keep  # no token twice
        unmasked = {n for n in range(num_tokens) if mask[b, n] == 0}
        assert set(kept) == unmasked
        # ids_restore is a permutation; its first `keep` shuffled positions are the kept tokens, in order
        restore = ids_restore[b].tolist()
        assert sorted(restore) == list(range(num_tokens))
        shuffle = sorted(range(num_tokens), key=lambda n: restore[n])  # inverse permutation
        assert shuffle[:keep] == kept
        for n in range(num_tokens):
            assert mask[b, n] == (1.0 if restore[n] >= keep else 0.0)


def test_masks_are_independent_per_sample():
    batch, num_tokens = 8, 392
    tokens = torch.zeros(1, num_tokens, 4).expand(batch, -1, -1).contiguous()  # identical samples
    _, mask, _ = random_masking(tokens, 0.85, generator=torch.Generator().manual_seed(3))
    rows = {tuple(row.tolist()) for row in mask}
    assert len(rows) == batch  # every sample got its own mask
    # every token position is kept somewhere and masked somewhere across a larger batch
    _, big_mask, _ = random_masking(torch.zeros(256, 20, 1), 0.5, generator=torch.Generator().manual_seed(4))
    per_position = big_mask.mean(dim=0)
    assert torch.all(per_position > 0) and torch.all(per_position < 1)


def test_generator_makes_masking_reproducible():
    tokens = torch.randn(2, 50, 3)
    first = random_masking(tokens, 0.8, generator=torch.Generator().manual_seed(7))
    second = random_masking(tokens, 0.8, generator=torch.Generator().manual_seed(7))
    other = random_masking(tokens, 0.8, generator=torch.Generator().manual_seed(8))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], other[1])


def test_visible_tokens_keep_gradient_path():
    tokens = torch.randn(2, 10, 3, requires_grad=True)
    visible, mask, _ = random_masking(tokens, 0.6, generator=torch.Generator().manual_seed(0))
    visible.sum().backward()
    # gradient 1 exactly at kept tokens, 0 at masked ones
    expected = (1 - mask).unsqueeze(-1).expand(-1, -1, 3)
    assert torch.equal(tokens.grad, expected)
