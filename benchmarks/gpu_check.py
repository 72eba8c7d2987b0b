"""One-command GPU check (issue 14): what must work on a GPU before a real job is started.

    bash scripts/gpu_check.sh [--json runs/gpu_check.json] [--shards sample_shards] [--only env,dali,...]

Runs on one GPU in a few minutes (budget: 8 min; every check has its own time limit and the
report says which ran out) and writes a JSON report plus a readable summary. Checks, in order:

env         torch / CUDA / DALI / DeepSpeed versions; compute capability against the installed
            torch's arch list (``xkd.devices``); true bf16 support (>= 8.0, not emulation);
            ``libnvcuvid`` loadable (NVDEC, needed by DALI's ``mixed`` video decoder).
dali        the DALI loader with ``data.device=gpu`` (``mixed`` NVDEC decode, GPU ops) on our VP9
            shards at paper geometry: outputs on the current device; frames equal to the CPU
            backend's within the documented loader tolerance (mean |diff| < 0.05 normalised,
            every frame's mean < 0.035, log-mels 1e-3; tests/test_dali_loader.py); samples/s.
train_bf16  ViT-L video + ViT-B audio MS (configs/xkd_ms_audioset_vitl.yaml), 8 DeepSpeed ZeRO-2
train_fp16  steps each in bf16 and fp16 with attention restricted to the flash / memory-efficient
            SDPA kernels (a fallback to the math kernel raises instead of running silently):
            peak memory, finite losses, fp16 loss scale moving, teacher changed by the EMA, MFU.
zero3       ZeRO-3 save, reload into a fresh engine, equal weights and an equal next-step loss.
eval        features (bf16 autocast vs fp32, cosine) and 2 fine-tuning steps in bf16 of ViT-L
            at 224 px x 32 frames with activation checkpointing (synthetic clips), peak memory.
zero2_ddp   step time of ZeRO-2 vs plain DDP at ViT-B (one rank each; their ratio).

Without a GPU it prints ``error: ...`` and exits 2 (tests/test_gpu_check.py); a failed check
exits 1, all passed 0.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

BUDGET_S = 8 * 60
VITL_CONFIG = ROOT / "configs" / "xkd_ms_audioset_vitl.yaml"
VITB_CONFIG = ROOT / "configs" / "xkd_ms_k400.yaml"
ZERO2, ZERO3 = ROOT / "ds_configs" / "zero2.json", ROOT / "ds_configs" / "zero3.json"
# Dense peak tensor throughput (FLOP/s) for MFU, by a substring of the device name: bf16/fp16.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
              "V100": 125e12, "RTX 4090": 165e12, "A6000": 155e12}
# DALI GPU vs CPU backend (the loader tolerance documented in tests/test_dali_loader.py).
FRAME_MEAN_ABS, FRAME_MEAN_SHIFT, MEL_ATOL = 0.05, 0.035, 1e-3


class CheckFailed(AssertionError):
    """A GPU check found something wrong; the message says what."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ----------------------------------------------------------------------------- set-up


def no_gpu_reason() -> str | None:
    """None when a CUDA GPU is usable, else why not (the message of the no-GPU exit)."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - the venv has torch
        return f"torch cannot be imported ({error}); run `bash scripts/setup_env.sh`"
    if os.environ.get("XKD_GPU_CHECK_FORCE_NO_GPU"):  # tests: the no-GPU path on any machine
        return "no CUDA GPU is visible (XKD_GPU_CHECK_FORCE_NO_GPU is set)"
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return (f"no CUDA GPU is visible to torch {torch.__version__}{where}; gpu_check needs one GPU. "
                "Run it on a GPU node, e.g. `srun --gpus=1 bash scripts/gpu_check.sh`")
    return None


def start_single_rank():
    """A one-rank process group on GPU 0 of this process (set_device first), as the trainer does."""
    import torch.distributed as dist

    from xkd.distributed import accelerator_device, discover, init_process_group

    env = discover()
    device = accelerator_device(env.local_rank)
    if not dist.is_initialized():
        init_process_group(env)
    return device


def vit_config(path: Path, precision: str, micro_batch: int, **model: Any):
    from xkd.config import load_config

    overrides = [f"train.precision={precision}", f"train.micro_batch_size={micro_batch}",
                 f"train.global_batch_size={micro_batch}", "data.loader=dali", "data.device=gpu"]
    overrides += [f"model.{key}={json.dumps(value)}" for key, value in model.items()]
    return load_config(path, overrides)


def sync(device) -> None:
    """Wait for the device's queued work (timings); nothing to wait for on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def rng_state(device) -> tuple:
    import torch

    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: tuple, device) -> None:
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def peak_flops(name: str) -> float | None:
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


@contextlib.contextmanager
def fused_attention_only():
    """SDPA restricted to flash / memory-efficient kernels: where neither applies, torch raises
    ("No available kernel") instead of running the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        yield


def check_timm_uses_sdpa(model) -> None:
    from timm.models.vision_transformer import Attention

    slow = [name for name, m in model.named_modules() if isinstance(m, Attention) and not m.fused_attn]
    require(not slow, f"timm attention not fused (TIMM_FUSED_ATTN?) in {len(slow)} modules, e.g. {slow[:2]}")


# ----------------------------------------------------------------------------- checks


def check_env() -> dict:
    import torch

    from xkd.devices import bf16_supported, unsupported_gpu_message

    index = torch.cuda.current_device()
    capability = torch.cuda.get_device_capability(index)
    arch_list = torch.cuda.get_arch_list()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(index), "capability": list(capability),
        "torch": torch.__version__, "cuda": torch.version.cuda, "arch_list": arch_list,
        "nccl": str(torch.cuda.nccl.version()), "python": platform.python_version(),
        "visible_gpus": torch.cuda.device_count(), "memory_gib": torch.cuda.get_device_properties(index).total_memory / 2**30,
        "bf16_native": bf16_supported(capability) and torch.cuda.is_bf16_supported(including_emulation=False),
    }
    for module in ("nvidia.dali", "deepspeed", "timm"):
        try:
            report[module] = __import__(module, fromlist=["__version__"]).__version__
        except Exception as error:  # noqa: BLE001 - reported
            report[module] = f"unavailable: {error}"
    try:
        ctypes.CDLL("libnvcuvid.so.1")
        report["libnvcuvid"] = "loadable"
    except OSError as error:
        report["libnvcuvid"] = f"not loadable: {error}"
    message = unsupported_gpu_message(report["device"], capability, arch_list, torch.version.cuda)
    require(message is None, message or "")
    require(report["libnvcuvid"] == "loadable",
            f"libnvcuvid.so.1 {report['libnvcuvid']}: DALI's mixed video decoder (NVDEC) cannot run; the driver "
            "install lacks the video codec library (container: NVIDIA_DRIVER_CAPABILITIES must include 'video')")
    return report


def check_dali(shards: str, batches: int = 4, batch_size: int = 2, device: str = "gpu") -> dict:
    """The DALI loader on ``device`` ("gpu": NVDEC decode, crops and finishing on the GPU) against its CPU
    backend, and its speed."""
    import torch

    from xkd.data.dali_pipeline import DaliClipLoader
    from xkd.data.loader import training_samples
    from xkd.data.sampler import EpochPlan
    from xkd.data.batch_finish import BatchFinisher
    from xkd.data.video_crops import plane_keys

    config = vit_config(VITB_CONFIG, "bf16", batch_size)  # paper geometry views
    if not Path(shards).exists() and Path(shards) == ROOT / "sample_shards":
        # The quickstart's shards of the bundled sample clips (VP9, short side 128): a few seconds.
        subprocess.run(["bash", str(ROOT / "scripts" / "make_sample_shards.sh")], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    samples = training_samples(config, shards, 1)
    plan = EpochPlan(len(samples), 1, 0, config.train.seed)
    common = dict(views=config.views, batch_size=batch_size, plan=plan, seed=0, augment=False)
    # Both with DALI's decoder (NVDEC on the GPU; on the CPU, where tests run this check, the same graph
    # twice), so the comparison isolates NVDEC from the CPU default's PyAV decode into YUV.
    gpu_loader = DaliClipLoader(samples, device=device, cpu_decoder="dali", **common)
    cpu_loader = DaliClipLoader(samples, device="cpu", cpu_decoder="dali", **common)
    current = torch.device("cpu")
    if device == "gpu":
        current = torch.device("cuda", torch.cuda.current_device())
        require(gpu_loader.pipeline.device_id == current.index,
                f"DALI pipeline on GPU {gpu_loader.pipeline.device_id}, current device {current}")
    worst = {"frame_mean_abs": 0.0, "frame_mean_shift": 0.0, "mel_max_abs": 0.0}
    finish_here, finish_on_cpu = BatchFinisher(config.views).to(current), BatchFinisher(config.views)
    gpu_batches = []
    for got, ref in zip(iter(gpu_loader), iter(cpu_loader)):
        for name in (*plane_keys(got), "audio_window"):  # the view parameters come from Python, on the host
            require(got[name].device == current, f"DALI output {name} on {got[name].device}, expected {current}")
        # Compared as the model sees them: finished (colour, flip, normalisation) on each side's device.
        got = {k: v.cpu() for k, v in finish_here(got).items()}
        ref = finish_on_cpu(ref)
        for name in ("video_global", "video_local"):
            worst["frame_mean_abs"] = max(worst["frame_mean_abs"], float((got[name] - ref[name]).abs().mean()))
        shift = (got["video_global"].mean(dim=(1, 3, 4)) - ref["video_global"].mean(dim=(1, 3, 4))).abs().max()
        worst["frame_mean_shift"] = max(worst["frame_mean_shift"], float(shift))
        for name in ("audio_global", "audio_local"):
            worst["mel_max_abs"] = max(worst["mel_max_abs"], float((got[name] - ref[name]).abs().max()))
        gpu_batches.append(1)
        if len(gpu_batches) >= batches:
            break
    require(gpu_batches, "the DALI loaders gave no batch")
    require(worst["frame_mean_abs"] < FRAME_MEAN_ABS and worst["frame_mean_shift"] < FRAME_MEAN_SHIFT
            and worst["mel_max_abs"] < MEL_ATOL, f"GPU views differ from the CPU views beyond tolerance (frames: decode; mels: the log-mel's "
            f"numerics on the GPU): {worst}")
    # Throughput of the GPU loader and the finishing on the device (a fresh epoch, after one warm-up batch).
    loader = DaliClipLoader(samples, device=device, **common)
    stream = iter(loader)
    next(stream)
    sync(current)
    started, seen = time.perf_counter(), 0
    for batch in stream:
        seen += finish_here(batch)["video_global"].shape[0]
        if seen >= batches * batch_size:
            break
    sync(current)
    elapsed = time.perf_counter() - started
    return {**worst, "batches_compared": len(gpu_batches), "samples_per_s": seen / elapsed if elapsed > 0 else None,
            "tolerance": {"frame_mean_abs": FRAME_MEAN_ABS, "frame_mean_shift": FRAME_MEAN_SHIFT, "mel": MEL_ATOL}}


def _engine(config, ds_path: Path, device, fp16_window: int | None = None):
    """The trainer's pieces: XKD student in a DeepSpeed engine, fp32 teacher outside it."""
    import deepspeed
    import torch

    from xkd.ema import teacher_student_pairs
    from xkd.engine.ds_config import resolve_ds_config
    from xkd.engine.params import student_optimizer
    from xkd.models import XKD
    from xkd.models.encoder import set_activation_checkpointing

    ds = resolve_ds_config(ds_path, config, 1)
    if fp16_window is not None and ds.get("fp16", {}).get("enabled"):
        ds["fp16"]["loss_scale_window"] = fp16_window  # the scale must move within the check's steps
    torch.manual_seed(config.train.seed)
    model = XKD(config)
    set_activation_checkpointing(model.student, config.model.activation_checkpointing)
    teacher = model.teacher.to(device)
    engine, optimizer, _, _ = deepspeed.initialize(model=model.student, optimizer=student_optimizer(model.student,
                                                   config.optim), config=ds)
    return engine, optimizer, teacher, teacher_student_pairs(teacher, engine.module)


def _train_steps(config, engine, optimizer, teacher, pairs, device, steps: int, seed: int = 0) -> dict:
    import torch

    from xkd.config import scaled_lr
    from xkd.engine.ema_gather import ema_update_gathered
    from xkd.engine.synthetic import synthetic_batch
    from xkd.models import teacher_views

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.train.precision]
    generator = torch.Generator().manual_seed(seed)
    for group in optimizer.param_groups:  # the optimizer starts at lr 0 (the trainer sets it per step)
        group["lr"] = scaled_lr(config)
    losses, scales, times = [], [], []
    for _ in range(steps):
        batch = {k: v.to(device) for k, v in synthetic_batch(config, config.train.micro_batch_size, generator).items()}
        sync(device)
        started = time.perf_counter()
        with fused_attention_only():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                targets = teacher(*teacher_views(batch, config.model.teacher_view),
                                  config.loss.video_teacher_temperature.start,
                                  config.loss.audio_teacher_temperature.start)
            out = engine({k: v.to(dtype) for k, v in batch.items()}, targets)
            engine.backward(out["loss"])
        engine.step()
        ema_update_gathered(pairs, config.optim.ema_momentum_start, engine.zero_optimization_stage())
        sync(device)
        times.append(time.perf_counter() - started)
        losses.append(float(out["loss"].detach()))
        scales.append(float(getattr(optimizer, "cur_scale", 1.0) or 1.0))
    return {"losses": losses, "loss_scales": scales, "step_s": times}


def check_train(precision: str, steps: int = 8, micro_batch: int = 8, config_path: Path = VITL_CONFIG) -> dict:
    import torch

    from model_flops import step_flops
    from xkd.summary import build_model

    device = start_single_rank()
    config = vit_config(config_path, precision, micro_batch)
    engine, optimizer, teacher, pairs = _engine(config, ZERO2, device, fp16_window=2)
    check_timm_uses_sdpa(engine.module)
    before = [t.detach().clone() for t, _ in pairs[:8]]
    reset_peak(device)
    run = _train_steps(config, engine, optimizer, teacher, pairs, device, steps)
    require(all(math.isfinite(x) for x in run["losses"]), f"non-finite losses in {precision}: {run['losses']}")
    changed = any(not torch.equal(b, t) for b, (t, _) in zip(before, pairs[:8]))
    require(changed, "the teacher did not change after the EMA updates")
    if precision == "fp16":
        require(len(set(run["loss_scales"])) > 1, f"the fp16 loss scale never moved: {run['loss_scales']}")
    flops = step_flops(build_model(config, "meta"))["total"] * micro_batch
    step_s = median(run["step_s"][2:])  # the first steps build kernels and buffers
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    result = {**run, "peak_memory_gib": peak_gib(device), "median_step_s": step_s,
              "model_tflops_per_step": flops / 1e12, "achieved_tflops": flops / step_s / 1e12,
              "mfu": flops / step_s / peak if peak else None, "micro_batch": micro_batch}
    del engine, optimizer, teacher, pairs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def check_zero3_resume(steps: int = 2, micro_batch: int = 2, config_path: Path = VITB_CONFIG,
                       precision: str = "bf16") -> dict:
    """Save a ZeRO-3 engine (and the teacher, as the trainer does) and load it into a fresh engine:
    the gathered weights must be bitwise equal and the next step's loss (same batch, same RNG
    state) equal; the weights one step later are compared too (to a tolerance: the fused
    attention backward kernels may add in another order)."""
    import copy

    import deepspeed
    import torch

    def gathered(engine) -> list[torch.Tensor]:
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return [p.detach().float().cpu().clone() for p in params]

    device = start_single_rank()
    config = vit_config(config_path, precision, micro_batch)
    engine, optimizer, teacher, pairs = _engine(config, ZERO3, device)
    _train_steps(config, engine, optimizer, teacher, pairs, device, steps)
    with tempfile.TemporaryDirectory(prefix="xkd_gpu_check_") as folder:
        engine.save_checkpoint(folder, tag="check")
        saved = gathered(engine)
        teacher_state = copy.deepcopy(teacher.state_dict())
        rng = rng_state(device)
        expected = _train_steps(config, engine, optimizer, teacher, pairs, device, 1, seed=7)["losses"]
        uninterrupted = gathered(engine)
        del engine, optimizer, pairs
        fresh, fresh_optimizer, teacher, pairs = _engine(config, ZERO3, device)
        fresh.load_checkpoint(folder, tag="check")
        loaded = gathered(fresh)
        teacher.load_state_dict(teacher_state)
        set_rng_state(rng, device)
        got = _train_steps(config, fresh, fresh_optimizer, teacher, pairs, device, 1, seed=7)["losses"]
        resumed = gathered(fresh)
    equal = len(saved) == len(loaded) and all(torch.equal(a, b) for a, b in zip(saved, loaded))
    drift = max(float((a - b).abs().max()) for a, b in zip(uninterrupted, resumed))
    require(equal, "ZeRO-3: the weights loaded from the checkpoint differ from the saved ones")
    require(math.isclose(expected[0], got[0], rel_tol=1e-6, abs_tol=1e-6),
            f"ZeRO-3: next-step loss after resume {got[0]} differs from the uninterrupted run's {expected[0]}")
    require(drift < 1e-3, f"ZeRO-3: weights one step after resume differ by up to {drift:.3g}")
    return {"weights_equal": equal, "loss_uninterrupted": expected[0], "loss_resumed": got[0],
            "max_weight_diff_after_step": drift}


def check_eval(steps: int = 2, micro_batch: int = 2, config_path: Path = VITL_CONFIG, size: int = 224,
               frames: int = 32, precision: str = "bf16") -> dict:
    """Features in bf16 autocast against fp32 ones, then fine-tuning steps of the video encoder at
    the paper's fine-tuning geometry (224 px x 32 frames) in bf16 with activation checkpointing."""
    import torch
    from torch import nn

    from xkd.evaluation.features import encode_clips
    from xkd.evaluation.finetune import Classifier
    from xkd.models.encoder import set_activation_checkpointing
    from xkd.models.xkd import build_encoders

    device = start_single_rank()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    config = vit_config(config_path, precision, micro_batch)
    video, _ = build_encoders(config)
    video = video.to(device).eval()
    clips = torch.randn(4, 3, config.views.video_global_frames, config.views.video_global_size,
                        config.views.video_global_size, device=device)
    from xkd.devices import tf32_matmuls

    with fused_attention_only():
        ref = encode_clips(video, clips, device, None)
        half = encode_clips(video, clips, device, dtype)
        with tf32_matmuls(True):  # eval --precision tf32
            tf32 = encode_clips(video, clips, device, None)
    cosine = float(torch.nn.functional.cosine_similarity(ref, half, dim=-1).min())
    require(cosine > 0.99, f"{precision} features differ from fp32 ones (min cosine {cosine:.4f})")
    tf32_cosine = float(torch.nn.functional.cosine_similarity(ref, tf32, dim=-1).min())
    require(tf32_cosine > 0.999, f"tf32 features differ from fp32 ones (min cosine {tf32_cosine:.5f})")
    model = Classifier(video, num_classes=101, dropout=0.5).to(device).train()
    set_activation_checkpointing(model, True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    reset_peak(device)
    losses = []
    for _ in range(steps):
        x = torch.randn(micro_batch, 3, frames, size, size, device=device)
        y = torch.randint(0, 101, (micro_batch,), device=device)
        with fused_attention_only(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    require(all(math.isfinite(x) for x in losses), f"non-finite fine-tuning losses: {losses}")
    result = {"feature_min_cosine_vs_fp32": cosine, "tf32_feature_min_cosine_vs_fp32": tf32_cosine,
              "finetune_losses": losses, "micro_batch": micro_batch,
              "finetune_geometry": [frames, size, size], "finetune_peak_memory_gib": peak_gib(device)}
    del model, optimizer, video
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def check_zero2_vs_ddp(steps: int = 6, micro_batch: int = 8, config_path: Path = VITB_CONFIG,
                       precision: str = "bf16") -> dict:
    """Median step time of the student under DeepSpeed ZeRO-2 and under plain DDP (autocast)."""
    import torch
    from torch import nn

    from xkd.config import scaled_lr
    from xkd.engine.params import student_optimizer
    from xkd.engine.synthetic import synthetic_batch
    from xkd.models import XKD, teacher_views

    device = start_single_rank()
    config = vit_config(config_path, precision, micro_batch)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    engine, optimizer, teacher, pairs = _engine(config, ZERO2, device)
    zero2 = _train_steps(config, engine, optimizer, teacher, pairs, device, steps)["step_s"][2:]
    del engine, optimizer, pairs
    torch.manual_seed(0)
    model = XKD(config)
    student = nn.parallel.DistributedDataParallel(model.student.to(device),
                                                  device_ids=[device.index] if device.type == "cuda" else None)
    ddp_optimizer = student_optimizer(model.student, config.optim)
    for group in ddp_optimizer.param_groups:
        group["lr"] = scaled_lr(config)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    generator, times = torch.Generator().manual_seed(0), []
    for _ in range(steps):
        batch = {k: v.to(device) for k, v in synthetic_batch(config, micro_batch, generator).items()}
        sync(device)
        started = time.perf_counter()
        with fused_attention_only(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                targets = teacher(*teacher_views(batch, config.model.teacher_view),
                                  config.loss.video_teacher_temperature.start,
                                  config.loss.audio_teacher_temperature.start)
            loss = student(batch, targets)["loss"]
        ddp_optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(ddp_optimizer)
        nn.utils.clip_grad_norm_(student.parameters(), config.optim.grad_clip)
        scaler.step(ddp_optimizer)
        scaler.update()
        sync(device)
        times.append(time.perf_counter() - started)
    ddp = times[2:]
    return {"zero2_step_s": median(zero2), "ddp_step_s": median(ddp), "zero2_over_ddp": median(zero2) / median(ddp),
            "note": "one rank: the ratio is ZeRO-2's bookkeeping overhead, without communication"}


# ----------------------------------------------------------------------------- driver


def checks(shards: str) -> list[tuple[str, Callable[[], dict], float]]:
    """(name, check, time limit in seconds) in running order."""
    return [
        ("env", check_env, 30),
        ("dali", lambda: check_dali(shards), 60),
        ("train_bf16", lambda: check_train("bf16"), 110),
        ("train_fp16", lambda: check_train("fp16"), 90),
        ("zero3", check_zero3_resume, 60),
        ("eval", check_eval, 60),
        ("zero2_ddp", check_zero2_vs_ddp, 50),
    ]


def run_checks(selected: list[tuple[str, Callable[[], dict], float]], budget_s: float = BUDGET_S) -> dict:
    started = time.perf_counter()
    results = {}
    for name, check, limit in selected:
        left = budget_s - (time.perf_counter() - started)
        if left <= 0:
            results[name] = {"status": "skipped", "reason": f"the {budget_s:.0f} s budget was spent"}
            continue
        t0 = time.perf_counter()
        try:
            details = check()
            status, error = "passed", None
        except CheckFailed as failure:
            details, status, error = {}, "failed", str(failure)
        except Exception as failure:  # noqa: BLE001 - every error is a finding of the check
            details, status, error = {}, "error", f"{type(failure).__name__}: {failure}"
            details["traceback"] = traceback.format_exc(limit=8)
        elapsed = time.perf_counter() - t0
        results[name] = {"status": status, "seconds": round(elapsed, 2), "limit_s": limit, **details}
        if error:
            results[name]["error"] = error
        if elapsed > limit:
            results[name]["over_time"] = f"{elapsed:.0f} s > {limit:.0f} s"
        print(summary_line(name, results[name]), flush=True)
    return results


def summary_line(name: str, result: dict) -> str:
    keys = ("device", "capability", "bf16_native", "samples_per_s", "frame_mean_abs", "peak_memory_gib",
            "median_step_s", "mfu", "weights_equal", "feature_min_cosine_vs_fp32", "finetune_peak_memory_gib",
            "zero2_over_ddp")
    facts = ", ".join(f"{k}={_short(result[k])}" for k in keys if result.get(k) is not None)
    error = f" -- {result['error']}" if result.get("error") else ""
    return f"[gpu_check] {name:<10} {result['status'].upper():<7} {result.get('seconds', 0):6.1f}s  {facts}{error}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(ROOT / "runs" / "gpu_check.json"), help="report path")
    parser.add_argument("--shards", default=str(ROOT / "sample_shards"), help="VP9 shards for the DALI check")
    parser.add_argument("--only", default="", help="comma-separated checks to run (default all)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node()}
    reason = no_gpu_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        _write(args.json, {**report, "status": "no_gpu", "error": reason, "checks": {}})
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "4")
    selected = checks(args.shards)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {name for name, _, _ in selected})
        if unknown:
            print(f"error: unknown checks {unknown}; expected some of {[n for n, _, _ in selected]}", file=sys.stderr)
            return 2
        selected = [c for c in selected if c[0] in wanted]
    results = run_checks(selected, args.budget_s)
    failed = [name for name, r in results.items() if r["status"] != "passed"]
    report.update(status="failed" if failed else "passed", failed=failed, checks=results)
    _write(args.json, report)
    print(f"[gpu_check] {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}; report: {args.json}")
    return 1 if failed else 0


def _write(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
