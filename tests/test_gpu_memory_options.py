"""Memory-saving options of issue 14 on CPU: chunked EMA, activation checkpointing, precision in the feature cache key."""
from __future__ import annotations

import copy

import pytest
import numpy as np
import torch

from xkd.ema import ema_update_
from xkd.engine.ema_gather import chunk_pairs, ema_update_gathered
from xkd.models.encoder import ModalityEncoder, build_blocks, set_activation_checkpointing
from xkd.models.patches import VideoPatchEmbedding
from xkd.models.sizes import ENCODER_SIZES


def _pairs(dtype):
    torch.manual_seed(0)
    shapes = [(7, 5), (300,), (3, 4, 5), (1,), (1000,), (2, 2)]
    teachers = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    students = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in shapes]
    return list(zip(teachers, students))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_numel", [1, 64, 400, 1 << 26])
def test_chunked_ema_equals_one_update(dtype, max_numel):
    pairs = _pairs(dtype)
    expected = [(copy.deepcopy(t), s) for t, s in pairs]
    ema_update_(expected, 0.996)
    ema_update_gathered(pairs, 0.996, zero_stage=2, max_numel=max_numel)
    for (t, _), (e, _) in zip(pairs, expected):
        torch.testing.assert_close(t, e, rtol=0, atol=0)


def test_chunks_bound_elements_and_keep_order():
    pairs = _pairs(torch.float32)
    chunks = list(chunk_pairs(pairs, max_numel=400, max_params=2))
    assert [p for chunk in chunks for p in chunk] == pairs
    for chunk in chunks:
        assert len(chunk) <= 2
        assert len(chunk) == 1 or sum(s.numel() for _, s in chunk) <= 400  # a larger parameter is alone


def _encoder(drop_path=0.0):
    size = ENCODER_SIZES["tiny"]
    return ModalityEncoder(VideoPatchEmbedding(size.embed_dim, 4, 16), (2, 2, 2), size, build_blocks(size, drop_path))


@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_activation_checkpointing_gives_the_same_gradients(drop_path):
    torch.manual_seed(0)
    plain = _encoder(drop_path).train()
    checkpointed = copy.deepcopy(plain)
    assert set_activation_checkpointing(checkpointed, True) == 1
    x = torch.randn(2, 3, 8, 32, 32)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # masking and stochastic depth draw the same numbers
        out = model(x, mask_ratio=0.5)
        out.tokens.square().mean().backward()
        results.append((out.tokens.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_activation_checkpointing_is_a_config_switch(tiny_config):
    from xkd.models import XKD

    assert tiny_config().model.activation_checkpointing is False  # off by default
    config = tiny_config(model={"activation_checkpointing": True})
    assert config.model.activation_checkpointing is True
    model = XKD(config)
    assert set_activation_checkpointing(model.student, config.model.activation_checkpointing) == 2
    assert all(m.activation_checkpointing for m in model.student.modules() if isinstance(m, ModalityEncoder))
    assert not any(m.activation_checkpointing for m in model.teacher.modules() if isinstance(m, ModalityEncoder))


def test_feature_cache_key_includes_precision(sound_shards, random_tiny_export):
    from xkd.evaluation.datasets import load_dataset
    from xkd.evaluation.features import cache_path, feature_identity
    from xkd.evaluation.protocol import linear_clip_spec

    dataset = load_dataset(sound_shards, name="sounds")
    spec = linear_clip_spec("audio")
    keys = [item.key for item in dataset.items[:4]]
    ids = {p: feature_identity(random_tiny_export, "audio_teacher_encoder", dataset, spec, "test", 3, None, 0, keys,
                               precision=p) for p in ("fp32", "tf32", "bf16", "fp16")}
    assert {ids[p]["precision"] for p in ids} == {"fp32", "tf32", "bf16", "fp16"}
    assert len({cache_path("/c", identity) for identity in ids.values()}) == 4


def test_tf32_on_cpu_computes_and_caches_fp32_features(sound_shards, random_tiny_export, tmp_path):
    """tf32 (like bf16/fp16 autocast) acts on CUDA only: on CPU the features are fp32 ones, so the
    fp32 cache entry serves both."""
    from xkd.evaluation.datasets import load_dataset
    from xkd.evaluation.features import extract_features
    from xkd.evaluation.protocol import linear_clip_spec

    dataset = load_dataset(sound_shards, name="sounds")
    common = dict(n_clips=1, device="cpu", cache_dir=tmp_path, progress=False, indices=np.arange(3))
    first = extract_features(random_tiny_export, "audio_teacher_encoder", dataset, linear_clip_spec("audio"),
                             precision="fp32", **common)
    again = extract_features(random_tiny_export, "audio_teacher_encoder", dataset, linear_clip_spec("audio"),
                             precision="tf32", **common)
    assert first.forward_batches > 0 and again.from_cache and again.identity["precision"] == "fp32"
    assert np.array_equal(first.features, again.features)


def test_nonfinite_vote_reads_the_flags_once():
    """The vote of the trainer: flags made on the device from the loss tensor (no .item() first)."""
    from xkd.engine.trainer import _agree

    cpu = torch.device("cpu")
    assert _agree(torch.tensor(1.5), False, cpu) == (False, False)
    assert _agree(torch.tensor(float("nan")), False, cpu) == (True, False)
    assert _agree(torch.tensor(float("inf"), dtype=torch.bfloat16), True, cpu) == (True, True)
    assert _agree(torch.tensor(0.0, dtype=torch.float16), True, cpu) == (False, True)
