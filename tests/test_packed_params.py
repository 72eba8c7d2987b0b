"""View parameters packed into one float64 vector (xkd.data.packed_params): hand-made values
through pack and unpack, and the PyTorch loader's tensors of drawn parameters, key for key."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from media import TINY_VIEWS, views_config
from xkd.data.audio_finish import audio_param_tensors
from xkd.data.packed_params import pack_view_params, packed_size, unpack_view_params
from xkd.data.sampler import view_rng
from xkd.data.video_crops import crop_param_tensors
from xkd.data.video_finish import video_param_tensors
from xkd.data.view_params import ClipViewParams, ColorJitter, draw_view_params

VIEWS = views_config(**TINY_VIEWS)  # 2 local video views, 2 local audio views


def hand_made() -> ClipViewParams:
    return ClipViewParams(
        video_start=5, audio_start=10000,
        global_box=np.array([0.1, 0.2, 0.9, 0.7], dtype=np.float32), global_flip=True,
        global_color=ColorJitter(1.1, 0.9, 0.0, -0.15),
        local_offsets=np.array([0, 3], dtype=np.int32),
        local_boxes=np.array([[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 0.75, 1.0]], dtype=np.float32),
        local_flips=np.array([False, True]),
        local_colors=[ColorJitter(0.7, 1.3, 1.2, 0.05), ColorJitter(1.0, 1.0, 0.0, 0.0)],
        local_blur_sigmas=np.array([0.0, 1.5], dtype=np.float32), audio_gain=0.95,
        audio_local_offsets=np.array([0, 16000], dtype=np.int32),
        audio_local_gains=np.array([0.8, 1.2], dtype=np.float32),
        audio_local_boxes=np.array([[-3, -7, 60, 90], [0, 1, 64, 100]], dtype=np.int32),
    )


def test_hand_made_values_pack_in_order_and_unpack_to_each_key():
    packed = pack_view_params(hand_made())
    assert packed.dtype == np.float64 and packed.shape == (packed_size(VIEWS),) == (4 + 1 + 4 + 2 + 8 + 2 + 8 + 2 + 1 + 2 + 2 + 8,)
    assert packed[:9].tolist() == pytest.approx([0.1, 0.2, 0.9, 0.7, 1.0, 1.1, 0.9, 0.0, -0.15])
    out = unpack_view_params(torch.from_numpy(np.stack([packed, packed])), VIEWS)
    assert out["video_global_flip"].tolist() == [True, True] and out["video_global_flip"].dtype == torch.bool
    assert out["video_local_offset"].tolist() == [[0, 3]] * 2 and out["video_local_offset"].dtype == torch.int64
    assert out["video_local_flip"][0].tolist() == [False, True]
    assert out["video_local_color"][0].flatten().tolist() == pytest.approx([0.7, 1.3, 1.2, 0.05, 1.0, 1.0, 0.0, 0.0])
    assert out["video_local_blur"][0].tolist() == [0.0, 1.5]
    assert out["audio_global_gain"].tolist() == pytest.approx([0.95, 0.95])
    assert out["audio_local_offset"][1].tolist() == [0, 16000]
    assert out["audio_local_box"][0].tolist() == [[-3, -7, 60, 90], [0, 1, 64, 100]]
    assert out["audio_local_box"].dtype == torch.float32 and out["video_local_box"].shape == (2, 2, 4)


def test_unpacked_drawn_parameters_equal_the_pytorch_loaders_tensors_bit_for_bit():
    """Both loaders must hand the trainer the same parameters: the PyTorch loader builds its tensors
    from ClipViewParams directly (colour factors rounded to float32 there)."""
    for index in range(20):
        params = draw_view_params(view_rng(3, 1, index), VIEWS, 48, 96000, 128, 160)
        unpacked = unpack_view_params(torch.from_numpy(pack_view_params(params))[None], VIEWS)
        expected = {**crop_param_tensors(params), **video_param_tensors(params, np.eye(3, 4)),
                    **audio_param_tensors(params)}
        for key, value in unpacked.items():
            assert value.dtype == expected[key].dtype, key
            assert torch.equal(value[0], expected[key]), key


def test_a_vector_of_other_views_is_refused():
    packed = torch.zeros(2, packed_size(VIEWS) + 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"expected \(samples, {packed_size(VIEWS)}\)"):
        unpack_view_params(packed, VIEWS)
