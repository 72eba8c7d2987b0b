"""One full XKD step on tiny tensors: where gradients flow, what the output dict holds."""
import pytest
import torch

from xkd.models import XKD, teacher_views

OUTPUT_KEYS = {
    "loss", "ae", "recon_video", "recon_audio", "da", "mmd_student", "mmd_teacher", "kd",
    "kd_video_to_audio", "kd_audio_to_video", "teacher_entropy_video", "teacher_entropy_audio",
    "kl_video_to_audio", "kl_audio_to_video", "head_cosine_video", "head_cosine_audio", "head_sqdist_cross",
    "teacher_spread_video", "teacher_spread_audio", "student_spread_video", "student_spread_audio",
}
STUDENT_GROUPS = ("video_encoder", "audio_encoder", "video_decoder", "audio_decoder", "video_head", "audio_head")


def _step(config, make_batch, batch_size=2, seed=0):
    torch.manual_seed(seed)
    model = XKD(config)
    out = model(make_batch(config, batch_size, seed), 0.1, 0.07)
    out["loss"].backward()
    return model, out


@pytest.mark.parametrize("variant", ["ms", "mas", "mats"])
def test_gradients_reach_every_student_part_and_no_teacher(tiny_config, random_batch, variant):
    model, out = _step(tiny_config(model={"variant": variant}), random_batch)
    teacher_params = list(model.teacher.named_parameters())
    assert teacher_params
    for name, param in teacher_params:
        assert param.grad is None, name
        assert not param.requires_grad, name
    for group in STUDENT_GROUPS:
        params = list(getattr(model.student, group).named_parameters())
        assert params, group
        for name, param in params:
            assert param.requires_grad, f"{group}.{name}"
            assert param.grad is not None, f"{group}.{name}"
            assert torch.all(torch.isfinite(param.grad)), f"{group}.{name}"
            assert param.grad.abs().sum() > 0, f"{group}.{name} has an all-zero gradient"
    # teacher and student share no storage, so no gradient can leak through shared tensors
    student_ptrs = {p.data_ptr() for p in model.student.parameters()}
    assert not student_ptrs & {p.data_ptr() for p in model.teacher.parameters()}


def test_output_dict_keys_and_values(tiny_config, random_batch):
    model, out = _step(tiny_config(), random_batch)
    assert set(out) == OUTPUT_KEYS
    for key, value in out.items():
        assert isinstance(value, torch.Tensor), key
        assert value.dim() == 0, key
        assert torch.isfinite(value), key
    assert out["loss"].grad_fn is not None
    assert out["mmd_teacher"].grad_fn is None and not out["mmd_teacher"].requires_grad
    for key in OUTPUT_KEYS - {"loss"}:
        assert out[key].grad_fn is None, key  # logged values are detached
    assert out["teacher_entropy_video"] > 0 and out["kd"] > 0 and out["mmd_student"] >= 0
    # the teachers' centres moved during the step
    assert model.teacher.video_centre.value.abs().sum() > 0
    assert model.teacher.audio_centre.value.abs().sum() > 0


def test_teacher_view_local_runs_on_the_local_views(tiny_config, random_batch):
    config = tiny_config(model={"teacher_view": "local"}, views={"video_local_views": 2, "audio_local_views": 2})
    model, out = _step(config, random_batch)
    assert set(out) == OUTPUT_KEYS
    assert all(torch.isfinite(v) for v in out.values())
    batch = random_batch(config, 2)
    video, audio = teacher_views(batch, "local")
    assert torch.equal(video, batch["video_local"][:, 0]) and torch.equal(audio, batch["audio_local"][:, 0])
    targets = model.teacher(video, audio, 0.1, 0.07, update_centres=False)
    assert targets.video_weights.shape == (2, 8)  # 2x2x2 local video tokens
    assert targets.audio_weights.shape == (2, 140)  # 20x7 local audio patches
    global_targets = model.teacher(*teacher_views(batch, "global"), 0.1, 0.07, update_centres=False)
    assert global_targets.video_weights.shape == (2, 64) and global_targets.audio_weights.shape == (2, 280)


def test_teacher_step_builds_no_graph(tiny_config, random_batch):
    config = tiny_config()
    model = XKD(config)
    batch = random_batch(config, 2)
    targets = model.teacher(batch["video_global"], batch["audio_global"], 0.1, 0.07)
    for name in ("video_probs", "audio_probs", "teacher_mmd", "video_weights", "audio_weights"):
        assert getattr(targets, name).grad_fn is None, name
    assert torch.allclose(targets.video_probs.sum(-1), torch.ones(2)) and targets.video_probs.shape == (2, 128)
    assert torch.all(targets.video_weights > 0) and torch.all(targets.audio_weights > 0)


def test_teacher_is_deterministic_with_stochastic_depth(tiny_config, random_batch):
    # drop_path applies to the students; the EMA teachers are fixed target networks and must not
    # drop blocks at random, whatever mode the enclosing module (or a trainer) puts them in.
    config = tiny_config(model={"drop_path": 0.5})
    model = XKD(config).train()
    assert model.student.training and not model.teacher.training
    batch = random_batch(config, 2)
    views = teacher_views(batch, "global")
    first = model.teacher(*views, 0.1, 0.07, update_centres=False)
    second = model.teacher(*views, 0.1, 0.07, update_centres=False)
    assert torch.equal(first.video_probs, second.video_probs)
    assert torch.equal(first.audio_weights, second.audio_weights)
    model.teacher.train()
    assert not model.teacher.training
    # the students do use stochastic depth in training mode
    encoder = model.student.video_encoder
    a, b = encoder(batch["video_local"][:, 0]).tokens, encoder(batch["video_local"][:, 0]).tokens
    assert not torch.equal(a, b)
