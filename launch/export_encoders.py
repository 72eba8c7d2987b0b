#!/usr/bin/env python
"""Export the four encoders of a checkpoint as fp32 safetensors for eval/.

    python launch/export_encoders.py runs/tiny/checkpoints/step00000020 --output runs/tiny/export
    python launch/export_encoders.py runs/tiny              # the latest complete checkpoint of a run
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xkd.cli_help import HelpFormatter
from xkd.engine import checkpoint
from xkd.engine.checkpoint_safety import UnsafeCheckpointError
from xkd.engine.export import export_encoders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("source", help="a checkpoint tag directory, or a run directory (uses its latest checkpoint)")
    parser.add_argument("--output", default=None, help="default: <run>/export/<tag>")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if (source / "checkpoints").is_dir():
        tag = checkpoint.latest_complete_tag(source / "checkpoints")
        if tag is None:
            print(f"error: {source}/checkpoints has no complete checkpoint", file=sys.stderr)
            return 2
        source = source / "checkpoints" / tag
    output = Path(args.output) if args.output else source.parents[1] / "export" / source.name
    try:
        paths = export_encoders(source, output)
    except (UnsafeCheckpointError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
