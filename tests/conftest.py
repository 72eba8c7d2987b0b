"""Shared helpers for the model and loss tests: a tiny config and a random batch.

Both are exposed as fixtures that return plain functions, so tests can build several
configs / batches (``def test_x(tiny_config, random_batch): cfg = tiny_config(model={'variant': 'mas'})``).
The functions are also importable for module-level use.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from slurm_cluster import slurm_cluster, two_nodes  # noqa: F401  (session fixtures: the real SLURM cluster)
from xkd.config import XKDConfig, config_from_dict

# Tiny widths (encoder 'tiny' = 64-d, 2 blocks, 4 heads) and small views:
# video global 8x32x32 with 2x8x8 cuboids -> 4x4x4 = 64 tokens (10 visible at 0.85),
# video local 4x16x16 -> 2x2x2 = 8 tokens, audio global 2 s -> 80x224 -> 20x14 = 280 patches
# (56 visible at 0.8), audio local 1 s -> 80x112 -> 20x7 = 140 patches.
TINY: dict[str, Any] = {
    "model": {
        "video_encoder": "tiny",
        "audio_encoder": "tiny",
        "video_tubelet": 2,
        "video_patch": 8,
        "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
        "head": {"hidden_dim": 64, "bottleneck_dim": 32, "out_dim": 128},
    },
    "views": {
        "video_global_frames": 8,
        "video_global_size": 32,
        "video_local_frames": 4,
        "video_local_size": 16,
        "audio_global_seconds": 2.0,
        "audio_local_seconds": 1.0,
    },
}

# Paper view geometry (default views) with the tiny encoder and small decoder / head.
PAPER_GEOMETRY_TINY: dict[str, Any] = {
    "model": {
        "video_encoder": "tiny",
        "audio_encoder": "tiny",
        "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
        "head": {"hidden_dim": 64, "bottleneck_dim": 32, "out_dim": 128},
    },
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_tiny_config(paper_geometry: bool = False, **overrides: Any) -> XKDConfig:
    """Validated tiny config; ``overrides`` are top-level sections merged deeply,
    e.g. ``make_tiny_config(model={'variant': 'mats'}, views={'video_local_views': 2})``."""
    base = PAPER_GEOMETRY_TINY if paper_geometry else TINY
    return config_from_dict(_merge(base, overrides), source="<tests>")


def make_random_batch(config: XKDConfig, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """The batch dict documented at the top of xkd/models/xkd.py, filled with N(0, 1) noise."""
    v = config.views
    g = torch.Generator().manual_seed(seed)
    return {
        "video_global": torch.randn(
            batch_size, 3, v.video_global_frames, v.video_global_size, v.video_global_size, generator=g),
        "video_local": torch.randn(
            batch_size, v.video_local_views, 3, v.video_local_frames, v.video_local_size, v.video_local_size,
            generator=g),
        "audio_global": torch.randn(batch_size, 1, v.mel_bins, v.audio_global_frames, generator=g),
        "audio_local": torch.randn(batch_size, v.audio_local_views, 1, v.mel_bins, v.audio_local_frames, generator=g),
    }


@pytest.fixture
def tiny_config():
    return make_tiny_config


@pytest.fixture
def random_batch():
    return make_random_batch


# ----------------------------------------------------------------------------- real media
import os  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from media import CLIPS, encode_sample, write_shard  # noqa: E402


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    work = tmp_path_factory.mktemp("clips")
    return {key: encode_sample(key, source, work, label) for label, (key, source) in enumerate(CLIPS.items())}


@pytest.fixture(scope="session")
def split(clips, tmp_path_factory):
    return write_shard(tmp_path_factory.mktemp("shards") / "train-000000.tar", clips)


# ----------------------------------------------------------------------------- evaluation media
import eval_media  # noqa: E402


@pytest.fixture(scope="session")
def sound_shards(tmp_path_factory):
    """The bundled labelled sound effects as audio-only shards (real make_shards run, cached per
    version of its inputs and code: ``eval_media.cached_sound_shards``)."""
    return eval_media.cached_sound_shards(tmp_path_factory.mktemp("sound_shards") / "shards")


@pytest.fixture(scope="session")
def random_tiny_export(tmp_path_factory):
    """Step-0 (random init) encoders of configs/tiny.yaml in the export format."""
    return eval_media.write_random_init_export(tmp_path_factory.mktemp("random_init") / "export")


def _make_sample_shards(output: Path) -> Path:
    result = subprocess.run(["bash", str(REPO / "scripts" / "make_sample_shards.sh"), "--no-progress"], cwd=REPO,
                            env={**os.environ, "SAMPLE_SHARDS": str(output)}, capture_output=True, text=True)
    assert result.returncode == 0, f"make_sample_shards.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return output


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory) -> Path:
    """The built-in sample clips sharded by the real make_shards (scripts/make_sample_shards.sh,
    through the test shard cache), in a temporary folder named like the quickstart's, since run
    names and MLflow tags carry the folder's name."""
    from shard_cache import cached_shards

    return cached_shards("sample_shards", [REPO / "data" / "sample" / "av", REPO / "scripts" / "make_sample_shards.sh"],
                         _make_sample_shards, tmp_path_factory.mktemp("sample") / "sample_shards")


@pytest.fixture(scope="session")
def quickstart_shards() -> Path:
    """The repository's sample_shards/, exactly as the README's first command makes it, for the
    tests of commands typed exactly as documented (they read the config's data.shards). The only
    test fixture that writes into the checkout (an ignored folder the quickstart makes anyway)."""
    return _make_sample_shards(REPO / "sample_shards")


# ----------------------------------------------------------------------------- shared memory
@pytest.fixture(scope="session", autouse=True)
def no_leftover_allreduce_buffers():
    """Safety net for DeepSpeed's CPU all-reduce buffers (66 MB of RAM per rank in /dev/shm, named by
    port): the engine unlinks its own (xkd.distributed.unlink_cpu_allreduce_buffer), but a rank killed
    during start-up cannot. Names that appeared during the test session are removed at its end."""
    import os

    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_*"
    before = set(Path("/dev/shm").glob(pattern))
    yield
    for leftover in set(Path("/dev/shm").glob(pattern)) - before:
        leftover.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- failed commands
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails in ``subprocess.run(..., capture_output=True, check=True)`` (or on its
    timeout) shows the command's captured stdout and stderr in its report, not only the exit code."""
    outcome = yield
    report = outcome.get_result()
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, (subprocess.CalledProcessError, subprocess.TimeoutExpired)):
        command = " ".join(map(str, error.cmd)) if isinstance(error.cmd, (list, tuple)) else str(error.cmd)
        for name in ("stdout", "stderr"):
            text = getattr(error, name, None)
            if text:
                text = text.decode(errors="replace") if isinstance(text, bytes) else text
                report.sections.append((f"{name} of the failed command: {command[:160]}", text[-6000:]))
