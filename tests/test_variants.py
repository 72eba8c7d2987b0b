"""XKD variants (paper Table S5; docs/method.md §3.5): which tensors are shared, checked by tensor identity."""
import pytest
import torch

from xkd.config import ConfigError
from xkd.ema import ema_update_, teacher_student_pairs
from xkd.models import XKD

PER_MODALITY = ("patch_embed", "cls_token", "position", "norm")


def _ptrs(module_or_param):
    if isinstance(module_or_param, torch.nn.Parameter):
        return {module_or_param.data_ptr()}
    return {p.data_ptr() for p in module_or_param.parameters()}


def _block_params(encoder):
    return list(encoder.blocks.parameters())


def _assert_blocks_shared(a, b):
    assert a.blocks is b.blocks
    pa, pb = _block_params(a), _block_params(b)
    assert len(pa) == len(pb) > 0
    assert all(x is y for x, y in zip(pa, pb))


def _assert_disjoint(a, b):
    assert _ptrs(a).isdisjoint(_ptrs(b))
    ids_a = {id(p) for p in (a.parameters() if isinstance(a, torch.nn.Module) else [a])}
    ids_b = {id(p) for p in (b.parameters() if isinstance(b, torch.nn.Module) else [b])}
    assert ids_a.isdisjoint(ids_b)


@pytest.fixture(params=["ms", "mas", "mats"])
def model(request, tiny_config):
    torch.manual_seed(0)
    return XKD(tiny_config(model={"variant": request.param}))


def test_per_modality_parts_are_never_shared(model):
    for net in (model.student, model.teacher):
        for part in PER_MODALITY:
            _assert_disjoint(getattr(net.video_encoder, part), getattr(net.audio_encoder, part))
        _assert_disjoint(net.video_head, net.audio_head)
    _assert_disjoint(model.student.video_decoder, model.student.audio_decoder)
    # and the teacher shares nothing at all with the student
    _assert_disjoint(model.teacher, model.student)
    for name in ("video_encoder", "audio_encoder", "video_head", "audio_head"):
        assert getattr(model.teacher, name) is not getattr(model.student, name)


def test_block_sharing_per_variant(model):
    variant = model.config.model.variant
    student, teacher = model.student, model.teacher
    if variant == "ms":
        _assert_disjoint(student.video_encoder.blocks, student.audio_encoder.blocks)
        _assert_disjoint(teacher.video_encoder.blocks, teacher.audio_encoder.blocks)
    elif variant == "mas":
        _assert_blocks_shared(student.video_encoder, student.audio_encoder)
        _assert_disjoint(teacher.video_encoder.blocks, teacher.audio_encoder.blocks)
        # both teacher copies start from the shared student blocks
        for tv, ta, s in zip(_block_params(teacher.video_encoder), _block_params(teacher.audio_encoder),
                             _block_params(student.video_encoder)):
            assert torch.equal(tv, s) and torch.equal(ta, s)
    else:
        _assert_blocks_shared(student.video_encoder, student.audio_encoder)
        _assert_blocks_shared(teacher.video_encoder, teacher.audio_encoder)
    for modality in ("video_encoder", "audio_encoder"):
        _assert_disjoint(getattr(teacher, modality).blocks, student.video_encoder.blocks)
        _assert_disjoint(getattr(teacher, modality).blocks, student.audio_encoder.blocks)


def test_unique_parameter_counts(model):
    variant = model.config.model.variant
    blocks = len(_block_params(model.student.video_encoder))
    for net, shared in ((model.student, variant != "ms"), (model.teacher, variant == "mats")):
        with_duplicates = len(list(net.named_parameters(remove_duplicate=False)))
        unique = len(list(net.parameters()))
        assert with_duplicates - unique == (blocks if shared else 0)


def test_ema_updates_shared_mats_teacher_blocks_exactly_once(tiny_config):
    model = XKD(tiny_config(model={"variant": "mats"}))
    pairs = teacher_student_pairs(model.teacher, model.student)
    assert len(pairs) == len(list(model.teacher.parameters()))  # each shared tensor once
    assert len({id(t) for t, _ in pairs}) == len(pairs)
    with torch.no_grad():
        for index, param in enumerate(model.teacher.parameters()):
            param.fill_(1.0 + index)
        for param in model.student.parameters():
            param.fill_(-2.0)
    before = {id(p): p.detach().clone() for p in model.teacher.parameters()}
    ema_update_(pairs, 0.9)
    for param in model.teacher.parameters():
        # once: 0.9 t - 0.2; twice would be 0.81 t + 0.19 * (-2)
        assert torch.allclose(param, 0.9 * before[id(param)] + 0.1 * -2.0, atol=1e-6)
    shared = _block_params(model.teacher.video_encoder)
    assert all(a is b for a, b in zip(shared, _block_params(model.teacher.audio_encoder)))
    first = shared[0]
    assert torch.allclose(first, 0.9 * before[id(first)] - 0.2)
    assert not torch.allclose(first, 0.81 * before[id(first)] + 0.19 * -2.0)


def test_ema_mas_both_teacher_block_copies_follow_the_shared_student(tiny_config):
    model = XKD(tiny_config(model={"variant": "mas"}))
    pairs = teacher_student_pairs(model.teacher, model.student)
    with torch.no_grad():
        for param in model.teacher.video_encoder.blocks.parameters():
            param.fill_(1.0)
        for param in model.teacher.audio_encoder.blocks.parameters():
            param.fill_(3.0)
        for param in model.student.video_encoder.blocks.parameters():
            param.fill_(-1.0)
    ema_update_(pairs, 0.5)
    for param in model.teacher.video_encoder.blocks.parameters():
        assert torch.allclose(param, torch.full_like(param, 0.0))  # 0.5 * 1 + 0.5 * -1
    for param in model.teacher.audio_encoder.blocks.parameters():
        assert torch.allclose(param, torch.full_like(param, 1.0))  # 0.5 * 3 + 0.5 * -1


@pytest.mark.parametrize("variant", ["mas", "mats"])
def test_shared_variants_reject_different_encoder_sizes(tiny_config, variant):
    with pytest.raises(ConfigError, match="model.audio_encoder"):
        tiny_config(model={"variant": variant, "video_encoder": "tiny", "audio_encoder": "small"})
    # modality-specific XKD accepts different sizes (ViT-L video + ViT-B audio on AudioSet)
    config = tiny_config(model={"variant": "ms", "video_encoder": "small", "audio_encoder": "tiny"})
    assert (config.model.video_encoder, config.model.audio_encoder) == ("small", "tiny")


@pytest.mark.parametrize("variant", ["mas", "mats"])
def test_reference_view_counts_three_local_video_one_local_audio(tiny_config, random_batch, variant):
    """The shipped MAS / MATS configs use 3 local video views and 1 local audio view (reference configs):
    f_s^v has (1 + 3) B rows, f_s^a (1 + 1) B rows, and the loss trains through every view."""
    config = tiny_config(model={"variant": variant}, views={"video_local_views": 3, "audio_local_views": 1})
    torch.manual_seed(0)
    model = XKD(config)
    rows = {}
    model.student.video_head.register_forward_hook(lambda m, i, o: rows.__setitem__("video", tuple(o.shape)))
    model.student.audio_head.register_forward_hook(lambda m, i, o: rows.__setitem__("audio", tuple(o.shape)))
    out = model(random_batch(config, 2), 0.1, 0.07)
    out_dim = config.model.head.out_dim
    assert rows == {"video": (8, out_dim), "audio": (4, out_dim)}
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.student.video_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
