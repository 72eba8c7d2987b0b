#!/usr/bin/env python
"""XKD pretraining in a DeepSpeed ZeRO engine.

    deepspeed launch/pretrain.py --ds_config ds_configs/zero2.json            # tiny config, sample shards
    deepspeed --num_gpus 8 launch/pretrain.py --config configs/xkd_ms_k400.yaml \\
        --ds_config ds_configs/zero2.json --data /data/k400/shards --output runs/k400_ms
    torchrun --nproc_per_node 2 launch/pretrain.py ...    # or srun, or plain python
    python launch/slurm_submit.py --nodes 4 --gpus-per-node 8 ...           # SLURM through submitit

--ds_config and --ds-config are the same option.

Ranks come from the launcher's environment (see xkd/distributed.py). On a CPU-only machine
the deepspeed launcher starts one process per NUMA node; LOCAL_SIZE=2 asks for two ranks.
Overrides: any ``key.sub=value`` after the options, e.g. ``train.max_steps=100``.
The body is xkd.engine.run.pretrain, shared with the SLURM task (xkd/slurm.py).
"""
from __future__ import annotations

import sys

from xkd.engine.run import pretrain


def main(argv: list[str] | None = None) -> int:
    return pretrain(argv, description=__doc__).exit_code


if __name__ == "__main__":
    sys.exit(main())
