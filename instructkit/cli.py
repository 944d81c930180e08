"""One command-line front for every stage: dataclass fields become flags, `--config FILE.yaml`
sets defaults, flags override the file, unknown keys are rejected (TRL's `TrlParser`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from trl import TrlParser

from instructkit.errors import UserError
from instructkit.runs.artifacts import is_main_process

ConfigT = TypeVar("ConfigT")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's ready-to-paste commands as written, and show every default."""


def build_parser(config_cls: type, description: str) -> TrlParser:
    parser = TrlParser(config_cls, description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="read defaults from a YAML file; flags override it")
    return parser


def parse_config(parser: TrlParser, argv: Sequence[str] | None = None) -> ConfigT:
    try:
        config, *_ = parser.parse_args_and_config(args=argv)  # the rest: the --config namespace
    except (ValueError, OSError) as exc:  # unknown key in the YAML, unreadable file
        parser.error(str(exc))
    return config


def print_config(config: object, title: str) -> None:
    if not is_main_process():
        return
    print(f"== {title}")
    print(json.dumps(dataclasses.asdict(config), indent=2, default=str))


def run_stage(main: Callable[[ConfigT], object], parser: TrlParser, argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn expected failures into a one-line message and a non-zero exit."""
    config = parse_config(parser, argv)
    try:
        main(config)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is on disk; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
