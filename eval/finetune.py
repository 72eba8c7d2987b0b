#!/usr/bin/env python
"""Full fine-tuning of an exported video or audio encoder with a linear head (docs/method.md §6; paper A.6).

    torchrun --nproc_per_node 8 eval/finetune.py --checkpoint runs/k400/export/step00100000 \\
        --modality video --preset ucf101 --data /shards/ucf101 --splits ucf101:/data/ucfTrainTestlist
    deepspeed --num_gpus 4 eval/finetune.py --engine deepspeed --ds-config ds_configs/zero2.json \\
        --checkpoint ... --modality audio --preset esc50 --data /shards/esc50 \\
        --labels /data/ESC-50/meta/esc50.csv --splits esc50:/data/ESC-50/meta/esc50.csv
    python eval/finetune.py ...            # one process (CPU or one GPU)

Presets (paper Tables S6/S7): ucf101, hmdb51, k400 (video, 224px, layer decay 0.45/0.55,
RandAug, mixup/cutmix, label smoothing 0.1, dropout 0.5) and esc50, fsd50k (audio, layer
decay 0.65, SpecAugment masks, time warp, volume jitter). Every hyper-parameter can be
overridden. One fine-tuning per split; test = mean over --test-clips uniformly spaced clips.
Results: JSON + MLflow child runs of the pretraining run; weights in --weights-dir.

Small sets: when a split has too few training items for the preset's batch (64 for esc50 on a
51-clip set with 32 training items), it is fine-tuned with the largest batch that fits, with a
warning; the results record batch_size (used) and batch_size_requested per split. An explicit
--batch-size is never changed: one that does not fit is an error listing the sizes that fit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xkd.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:

    from xkd.engine.export import load_encoder
    from xkd.evaluation import cli
    from xkd.evaluation.finetune import ENGINES, PRESETS, finetune
    from xkd.evaluation.protocol import encoder_name

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    cli.add_checkpoint_args(parser)
    cli.add_data_args(parser)
    ft = parser.add_argument_group("fine-tuning")
    ft.add_argument("--preset", choices=sorted(PRESETS), required=True,
                    help="the dataset's protocol (xkd/evaluation/finetune.py PRESETS); the flags below override it")
    # Each override defaults to the preset's value (None here).
    for name, kind, what in (
            ("epochs", cli.positive_int, "training epochs"),
            ("batch-size", cli.positive_int, "items per optimizer step over all ranks; left to the preset, a split "
                                            "too small for it uses the largest that fits"),
            ("lr", float, "peak learning rate"), ("min-lr", float, "final learning rate of the cosine"),
            ("warmup-epochs", float, "linear warm-up from 0"), ("weight-decay", float, "AdamW weight decay"),
            ("layer-decay", float, "layer-wise lr decay per block from the head down"),
            ("dropout", float, "dropout before the classifier"), ("drop-path", float, "stochastic depth rate"),
            ("label-smoothing", float, "label smoothing of the cross-entropy"),
            ("mixup", float, "mixup alpha (0: off)"), ("cutmix", float, "cutmix alpha (0: off)"),
            ("randaug", str, "timm RandAugment config, e.g. rand-m9-mstd0.5-inc1 (\"\": off)"),
            ("size", cli.positive_int, "video clip size in pixels"), ("frames", cli.positive_int, "video frames per clip"),
            ("seconds", cli.positive_float, "audio clip seconds"),
            ("test-clips", cli.positive_int, "uniformly spaced clips per test item"),
            ("grad-clip", float, "gradient norm clipping (0: off)"), ("seed", int, "seed of the run"),
            ("workers", cli.non_negative_int, "data loading processes")):
        ft.add_argument(f"--{name}", type=kind, default=None, help=f"{what} (default: the preset's)")
    # --batch-size: when left to the preset and a split has too few training items for it, the
    # largest batch that fits is used (logged, recorded per split); an explicit one is never changed.
    ft.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default=None,
                    help="training precision (default: the preset's): tf32 = fp32 with TF32 matmuls (A100/H100); "
                         "fp16 with loss scaling on V100")
    ft.add_argument("--engine", choices=ENGINES, default="auto",
                    help="auto: DDP when launched with several ranks, else one process; deepspeed: needs --ds-config")
    ft.add_argument("--ds-config", default=None, help="DeepSpeed JSON (ZeRO stage, bf16/fp16)")
    ft.add_argument("--weights-dir", type=Path, default=None,
                    help="save the fine-tuned weights per split here, and the training state after every epoch: "
                         "the same command continues an interrupted run (default: not saved)")
    ft.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    cli.add_run_args(parser, features=False)
    args = parser.parse_args(argv)
    cli.setup_logging()

    def run() -> int:
        import torch.distributed as dist

        cli.check_inputs(args, [args.modality])
        dataset, splits = cli.load_data(args)
        cli.require_modality(dataset, cli.split_items(splits), args.modality)
        config = PRESETS[args.preset].replace(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
            warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay, layer_decay=args.layer_decay,
            dropout=args.dropout, drop_path=args.drop_path, label_smoothing=args.label_smoothing, mixup=args.mixup,
            cutmix=args.cutmix, randaug=args.randaug, size=args.size, frames=args.frames, seconds=args.seconds,
            test_clips=args.test_clips, grad_clip=args.grad_clip, seed=args.seed, num_workers=args.workers,
            precision=args.precision)
        views = cli.pretrain_views(args)
        entries = []
        for split in splits:
            encoder = load_encoder(args.checkpoint, encoder_name(args.modality, args.encoder))
            weights = args.weights_dir / split.name if args.weights_dir else None
            result = finetune(encoder, dataset, split, args.modality, views, config, engine=args.engine,
                              ds_config=args.ds_config, output=weights, progress=not args.no_progress,
                              device=args.device, adapt_batch=args.batch_size is None)
            entries.append(result.entry(split))
        if dist.is_initialized() and dist.get_rank() != 0:
            return 0
        mean = cli.mean_over_splits(entries)
        params = {"preset": args.preset, **result.config, "batch_size_requested": config.batch_size}
        return cli.finish(args, cli.record(args, "finetune", dataset, args.modality, entries, mean, params))

    return cli.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
