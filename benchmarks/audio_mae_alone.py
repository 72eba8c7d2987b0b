#!/usr/bin/env python
"""How long the audio masked autoencoder needs before it learns anything (issue 12 diagnostic).

Trains only the student's audio encoder and audio decoder of a config (eq. 1, the paper's
per-patch normalised targets, audio mask ratio of the config) on the log-mel of a folder of clips,
in one process, with a constant learning rate after a short warm-up: no teacher, heads, KD or DA,
no cosine decay. Every ``--every`` steps it reports the loss on clips held out from training,
beside two references computed on the same held-out patches:

* ``zero``: predicting 0 for every normalised target value, (n - 1) / n for n values per patch
  (the unbiased variance normalises each patch);
* ``ridge``: a ridge regression fitted on the training clips that predicts a patch from its
  8 nearest patches in time and frequency, each visible with probability 1 - mask ratio (as the
  MAE sees them), plus the patch's frequency band: what a linear predictor learns.

A loss that stays near ``zero`` means the encoder sees no gradient that carries information about
the sound, so its features stay near their random init.

    python benchmarks/audio_mae_alone.py --clips runs/ablation/big/corpus/pretrain --steps 3600 --json mae.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xkd.config import load_config  # noqa: E402
from xkd.data.logmel import LogMel  # noqa: E402
from xkd.losses.reconstruction import masked_reconstruction_loss, normalized_patch_targets  # noqa: E402
from xkd.models import XKD  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, required=True, help="folder of video files with sound (searched recursively)")
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (XKD's configs: 0.3)")
    parser.add_argument("--grad-clip", type=float, default=0.0,
                        help="clip the gradient's global norm to this (0: no clipping; XKD's configs: 0.3)")
    parser.add_argument("--held-out", type=int, default=40, help="clips (the last in sorted order) never trained on")
    parser.add_argument("--every", type=int, default=200, help="steps between held-out evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--export", type=Path, default=None,
                        help="write an export directory (launch/export_encoders.py format) whose audio encoders "
                             "(student and teacher slots) are the trained one, video encoders at random init: "
                             "eval/linear_svm.py --modality audio takes it as --checkpoint")
    return parser.parse_args(argv)


def load_spectrograms(folder: Path, logmel: LogMel, seconds: float, rate: int) -> torch.Tensor:
    """(clips, 1, mel, frames) log-mel of the first ``seconds`` of each clip's (mono) sound."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".mp4", ".mkv", ".webm", ".avi"})
    if not files:
        raise SystemExit(f"error: no video files under {folder}")
    wanted = int(seconds * rate)
    spectrograms = []
    for path in tqdm(files, desc="log-mel", unit="clip"):
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SystemExit(f"error: {path} has no audio stream")
            stream = container.streams.audio[0]
            if stream.rate != rate:
                raise SystemExit(f"error: {path}: audio at {stream.rate} Hz, expected {rate} Hz")
            chunks = [frame.to_ndarray() for frame in container.decode(stream)]
        wave = np.concatenate([c.reshape(c.shape[0], -1) for c in chunks], axis=-1).mean(axis=0)[:wanted]
        if len(wave) < wanted:
            raise SystemExit(f"error: {path}: {len(wave) / rate:.2f} s of sound, expected {seconds} s")
        spectrograms.append(logmel(torch.tensor(wave, dtype=torch.float32)))
    return torch.stack(spectrograms).unsqueeze(1)


def ridge_reference(train: torch.Tensor, test: torch.Tensor, embed, mask_ratio: float, seed: int) -> float:
    """Held-out MSE of a ridge regression from the 8 nearest patches (each visible w.p. 1 - mask)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = ((0, -1), (0, 1), (-1, 0), (1, 0), (0, -2), (0, 2), (-2, 0), (2, 0))

    def design(spectrograms: torch.Tensor):
        batch = spectrograms.shape[0]
        freq, time_ = embed.grid(spectrograms.shape)
        raw = embed.patchify(spectrograms).reshape(batch, freq, time_, -1)
        normalised = normalized_patch_targets(raw)
        rows, targets = [], []
        for i in range(2, freq - 2):
            for j in range(2, time_ - 2):
                parts = []
                for di, dj in offsets:
                    visible = (torch.rand(batch, 1, generator=generator) >= mask_ratio).float()
                    parts += [normalised[:, i + di, j + dj] * visible, raw[:, i + di, j + dj] * visible, visible]
                parts.append(torch.nn.functional.one_hot(torch.full((batch,), i), freq).float())
                parts.append(torch.ones(batch, 1))
                rows.append(torch.cat(parts, dim=-1))
                targets.append(normalised[:, i, j])
        return torch.cat(rows), torch.cat(targets)

    x_train, y_train = design(train)
    x_test, y_test = design(test)
    weights = torch.linalg.solve(x_train.T @ x_train + 10.0 * torch.eye(x_train.shape[1]), x_train.T @ y_train)
    return (x_test @ weights - y_test).pow(2).mean().item()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config)
    views = config.views
    logmel = LogMel(views)
    spectrograms = load_spectrograms(args.clips, logmel, 2 * views.audio_global_seconds, views.audio_sample_rate)
    if len(spectrograms) <= args.held_out:
        raise SystemExit(f"error: {len(spectrograms)} clips under {args.clips}, need more than --held-out {args.held_out}")
    train, held = spectrograms[:-args.held_out], spectrograms[-args.held_out:]
    torch.manual_seed(args.seed)
    student = XKD(config).student
    encoder, decoder = student.audio_encoder, student.audio_decoder
    mask_ratio = config.model.audio_mask_ratio
    frames = spectrograms.shape[-1] // 2  # the global view: the first half of each clip's frames
    held_view = held[..., :frames]
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)

    def loss_of(view: torch.Tensor) -> torch.Tensor:
        encoded = encoder(view, mask_ratio=mask_ratio)
        prediction = decoder(encoded.tokens, encoded.ids_restore)
        target = normalized_patch_targets(encoder.patch_embed.patchify(view))
        return masked_reconstruction_loss(prediction, target, encoded.mask)

    patch_values = encoder.patch_embed.patch_dim
    result = {"clips": len(spectrograms), "held_out": args.held_out, "config": args.config, "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay, "grad_clip": args.grad_clip,
              "mask_ratio": mask_ratio,
              "zero": (patch_values - 1) / patch_values,
              "ridge": ridge_reference(train[..., :frames], held_view, encoder.patch_embed, mask_ratio, args.seed),
              "curve": []}
    print(f"references on the held-out clips: zero {result['zero']:.4f}, ridge {result['ridge']:.4f}", flush=True)
    started = time.time()
    for step in tqdm(range(1, args.steps + 1), desc="audio MAE", unit="step", mininterval=5):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / args.warmup)
        rows = torch.randint(0, len(train), (args.batch,), generator=generator)
        starts = torch.randint(0, spectrograms.shape[-1] - frames + 1, (args.batch,), generator=generator)
        view = torch.stack([train[r, ..., s:s + frames] for r, s in zip(rows.tolist(), starts.tolist())])
        loss = loss_of(view)
        optimizer.zero_grad()
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                torch.manual_seed(args.seed)  # the same masks at every evaluation
                held_loss = loss_of(held_view).item()
            result["curve"].append({"step": step, "train": loss.item(), "held_out": held_loss,
                                    "seconds": round(time.time() - started, 1)})
            tqdm.write(f"step {step}: train {loss.item():.4f}, held-out {held_loss:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.export:
        export_audio_encoder(args.export, student, config, {"step": str(args.steps), "source": "audio_mae_alone"})
    return result


def export_audio_encoder(output: Path, student, config, metadata: dict[str, str]) -> None:
    """The student's audio encoder in both audio slots of an export; the video slots hold its video encoder
    (untrained here). Probes of the audio teacher then measure the audio MAE alone."""
    import yaml

    from xkd.engine.export import write_export

    def fp32(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().contiguous().clone() for k, v in module.state_dict().items()}

    audio, video = fp32(student.audio_encoder), fp32(student.video_encoder)
    write_export(output, {"audio_student_encoder": audio, "audio_teacher_encoder": audio,
                          "video_student_encoder": video, "video_teacher_encoder": video},
                 yaml.safe_dump(config.to_dict(), sort_keys=False), metadata)


if __name__ == "__main__":
    main()
