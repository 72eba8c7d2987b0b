"""One pretraining run from command-line arguments: ``launch/pretrain.py`` and the SLURM task
(:mod:`xkd.slurm`) both call :func:`pretrain`, so a job behaves the same however it is started.

Ranks come from the launcher's environment (see :mod:`xkd.distributed`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from xkd.cli_help import HelpFormatter
from xkd.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "tiny.yaml"
DEFAULT_DS_CONFIG = ROOT / "ds_configs" / "zero2.json"
REPORT_GRACE_S = 5.0  # how long a rank that does not report a start-up error waits before exiting


@dataclass
class PretrainOutcome:
    """What a rank reached: ``exit_code`` 0 and ``step == max_steps`` when the schedule is done;
    ``step < max_steps`` after a stop signal (a checkpoint at ``step`` was saved)."""

    exit_code: int
    step: int = 0
    max_steps: int = 0
    rank: int = 0
    world_size: int = 1
    launcher: str = ""
    output: str = ""
    mlflow_run_id: str | None = None

    @property
    def completed(self) -> bool:
        return self.exit_code == 0 and self.step >= self.max_steps


def pretraining_options() -> argparse.ArgumentParser:
    """The options of one pretraining run, as a parent parser: ``launch/pretrain.py`` and
    ``launch/slurm_submit.py`` take exactly these (``parents=[pretraining_options()]``)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("pretraining")
    group.add_argument("--config", default=str(DEFAULT_CONFIG),
                       help="experiment YAML (default: configs/tiny.yaml, the sample config)")
    group.add_argument("--ds-config", dest="ds_config", default=str(DEFAULT_DS_CONFIG),
                       help="DeepSpeed JSON (default: ds_configs/zero2.json)")
    # DeepSpeed's own spelling, used by the documented command; the same option, not listed twice.
    group.add_argument("--ds_config", dest="ds_config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    group.add_argument("--data", default=None, help="shard directory or brace pattern (default: the config's data.shards)")
    group.add_argument("--output", default=None, help="run directory (default: runs/<config name>)")
    group.add_argument("--resume", default="auto",
                       help="auto (default: the latest complete checkpoint in --output, if any), none, or a checkpoint "
                            "tag directory")
    group.add_argument("--allow-change", action="append", default=[], metavar="KEY", help=ALLOW_CHANGE_HELP)
    group.add_argument("--max-steps", type=non_negative_int, default=0,
                       help="stop after this global step (default 0: the full schedule)")
    group.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. train.max_steps=100")
    return parser


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description or __doc__, parents=[pretraining_options()],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


ALLOW_CHANGE_HELP = ("on resume, accept this difference from the checkpoint's run: a config key (optim.base_lr), "
                     "a section (optim) or 'dataset'; repeatable; listed in the log and in MLflow")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 (the whole schedule) or a positive step count")
    return value


def shards_from_repo_root(shards: str) -> str:
    """A relative shard path that does not exist from the working directory is read from the repo root."""
    if not Path(shards).is_absolute() and not Path(shards).exists() and (ROOT / shards).exists():
        return str(ROOT / shards)
    return shards


def pretrain(argv: list[str] | None = None, stop=None, description: str | None = None) -> PretrainOutcome:
    """Parse ``argv`` (launch/pretrain.py's options), start the process group and train.

    ``stop`` is an :class:`xkd.engine.stop.StopRequest` installed by the caller (default: the
    trainer installs one for SIGTERM / SIGUSR1). Errors found before the process group starts
    (config, DeepSpeed config, data, resume checks of :mod:`xkd.engine.preflight`) print
    ``error: ...`` and give exit code 2.
    """
    args = build_parser(description).parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return PretrainOutcome(exit_code=2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from xkd.data.loader import build_train_loader
    from xkd.devices import DeviceError, require_precision
    from xkd.distributed import accelerator_device, discover, init_process_group
    from xkd.engine.ds_config import resolve_ds_config, with_micro_batch
    from xkd.engine.preflight import PreflightError, check_start
    from xkd.engine.trainer import RunOptions, Trainer

    env = discover(args.local_rank)
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s %(levelname)s: %(message)s")
    shards = shards_from_repo_root(args.data or config.data.shards)
    output = Path(args.output or ROOT / "runs" / config.name)
    derived = config.train.micro_batch_size == 0
    try:
        config = with_micro_batch(config, env.world_size, config_source=args.config)
        ds_config = resolve_ds_config(args.ds_config, config, env.world_size, config_source=args.config)
        start = check_start(config, shards, output, env.world_size, args.resume, args.allow_change)
        device = accelerator_device(env.local_rank)  # a GPU this torch cannot run, or bf16 below 8.0: refused
        require_precision(config.train.precision, device)
    except (ConfigError, PreflightError, DeviceError) as error:
        # One report per node (rank 0 and the first rank of every other node), then exit 2 everywhere.
        if env.is_main or env.local_rank == 0:
            print(f"error: {error}", file=sys.stderr)
        else:
            # torchrun and the deepspeed launcher stop every rank once one exits: the reporting
            # rank met the same error, and must get to print it before a silent rank's exit.
            time.sleep(REPORT_GRACE_S)
        return PretrainOutcome(exit_code=2, rank=env.rank, world_size=env.world_size, launcher=env.launcher)
    if env.is_main:
        logging.getLogger("xkd.train").info(
            "global batch %d on %d ranks: micro-batch %d x %d accumulation steps per rank (%s)",
            config.train.global_batch_size, env.world_size, config.train.micro_batch_size,
            ds_config["gradient_accumulation_steps"],
            f"derived, at most train.max_micro_batch_size={config.train.max_micro_batch_size}" if derived
            else "train.micro_batch_size")
    init_process_group(env, config.train.dist_timeout_s)
    output.mkdir(parents=True, exist_ok=True)
    options = RunOptions(output=output, ds_config=ds_config, ds_config_path=args.ds_config, resume=start.resume,
                         data_fingerprint=start.data, max_steps=args.max_steps or config.train.max_steps,
                         extra_params={"data": shards, "launcher": env.launcher, "micro_batch_derived": derived},
                         stop=stop)
    trainer = Trainer(config, env, device, lambda state: build_train_loader(config, shards, env.rank, env.world_size,
                                                                            state, start.samples), options)
    step = trainer.train()
    if env.is_main:
        logging.getLogger("xkd.train").info("finished at step %d; run directory %s", step, output)
    return PretrainOutcome(exit_code=0, step=step, max_steps=trainer.max_steps, rank=env.rank,
                           world_size=env.world_size, launcher=env.launcher, output=str(output),
                           mlflow_run_id=trainer.tracker.run_id)
