#!/usr/bin/env python
"""XKD pretraining in a DeepSpeed ZeRO engine.

    deepspeed launch/pretrain.py --ds_config ds_configs/zero2.json            # tiny config, sample shards
    deepspeed --num_gpus 8 launch/pretrain.py --config configs/xkd_ms_k400.yaml \\
        --ds_config ds_configs/zero2.json --data /data/k400/shards --output runs/k400_ms
    torchrun --nproc_per_node 2 launch/pretrain.py ...    # or srun / submitit, or plain python

Ranks come from the launcher's environment (see xkd/distributed.py). On a CPU-only machine
the deepspeed launcher starts one process per NUMA node; LOCAL_SIZE=2 asks for two ranks.
Overrides: any ``key.sub=value`` after the options, e.g. ``train.max_steps=100``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xkd.config import ConfigError, load_config  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "tiny.yaml"
DEFAULT_DS_CONFIG = ROOT / "ds_configs" / "zero2.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML (default: tiny sample config)")
    parser.add_argument("--ds_config", "--ds-config", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON")
    parser.add_argument("--data", default=None, help="shard directory or brace pattern (default: data.shards)")
    parser.add_argument("--output", default=None, help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", default="auto", help="auto (latest complete checkpoint), none, or a tag dir")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this global step (0: full schedule)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from xkd.data.loader import build_train_loader
    from xkd.distributed import accelerator_device, discover, init_process_group
    from xkd.engine.ds_config import resolve_ds_config
    from xkd.engine.trainer import RunOptions, Trainer

    env = discover(args.local_rank)
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s %(levelname)s: %(message)s")
    try:
        ds_config = resolve_ds_config(args.ds_config, config, env.world_size, config_source=args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    init_process_group(env)
    device = accelerator_device(env.local_rank)
    shards = args.data or config.data.shards
    if not Path(shards).is_absolute() and not Path(shards).exists() and (ROOT / shards).exists():
        shards = str(ROOT / shards)
    output = Path(args.output or ROOT / "runs" / config.name)
    output.mkdir(parents=True, exist_ok=True)
    options = RunOptions(output=output, ds_config=ds_config, ds_config_path=args.ds_config, resume=args.resume,
                         max_steps=args.max_steps or config.train.max_steps,
                         extra_params={"data": shards, "launcher": env.launcher})
    trainer = Trainer(config, env, device,
                      lambda state: build_train_loader(config, shards, env.rank, env.world_size, state), options)
    step = trainer.train()
    if env.is_main:
        logging.getLogger("xkd.train").info("finished at step %d; run directory %s", step, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
