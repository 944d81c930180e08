"""One command-line front for every stage: dataclass fields become flags, `--config FILE.yaml`
sets defaults, flags override the file, unknown keys are rejected (TRL's `TrlParser` habits, built
on argparse alone so that `--help` answers before torch, transformers and TRL are imported)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import TypeVar

from instructkit.config import BOUNDS
from instructkit.errors import UserError, problems_error
from instructkit.runs.artifacts import is_main_process

ConfigT = TypeVar("ConfigT")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's ready-to-paste commands as written, and show every default."""


def _to_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _or_none(kind: type) -> Callable[[str], object]:
    """An optional field's type: `none` or `null` give None (the field's "not set")."""
    def convert(value: str) -> object:
        return None if value.lower() in ("none", "null") else kind(value)
    convert.__name__ = kind.__name__  # argparse names the type in its error message
    return convert


class _ListFlag(argparse.Action):
    """A list flag: `--flag a b` and `--flag a --flag b` alike give [a, b] (a repeated flag adds to
    what the command line gave, never silently replaces it), and the command line replaces the
    default, a --config file's list included."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        earlier = [] if current is self.default else current  # (set_defaults, from --config, sets self.default)
        setattr(namespace, self.dest, [*earlier, *values])


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, kind: type) -> None:
    """`--name` and `--name-with-dashes` for a field, as transformers' HfArgumentParser makes them."""
    names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
    kwargs = {key: value for key, value in f.metadata.items() if key not in BOUNDS}  # bounds: setting_problems
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        kwargs["required"] = True
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if kind is bool:
        parser.add_argument(*names, type=_to_bool, default=default, nargs="?", const=True, **kwargs)
        if default is True:  # a flag that is on by default can be turned off
            parser.add_argument(f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}", action="store_false",
                                dest=f.name, default=False, **kwargs)
    elif typing.get_origin(kind) is list:
        parser.add_argument(*names, type=typing.get_args(kind)[0], nargs="+", action=_ListFlag, default=default, **kwargs)
    else:
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `float | None`
            kind = _or_none(next(arg for arg in typing.get_args(kind) if arg is not type(None)))
        parser.add_argument(*names, type=kind, default=None if default is dataclasses.MISSING else default, **kwargs)


def build_parser(config_cls: type, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        _add_field(parser, f, hints[f.name])
    parser.add_argument("--config", metavar="FILE.yaml", help="read defaults from a YAML file; flags override it")
    parser.set_defaults(_config_cls=config_cls)
    return parser


def _describe(kind: object) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return f"{_describe(typing.get_args(kind)[0])}, or a list of them"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null"}[kind]


def _yaml_value(f: dataclasses.Field, kind: object, value: object) -> object:
    """A YAML value as the field's type, strictly: argparse converts only the text of flags, and YAML
    has already typed the value (a number is text for a text field; one item stands for a list)."""
    if isinstance(value, bool) and "const" in f.metadata:  # a flag that may stand alone: `true` is that
        return f.metadata["const"] if value else f.default
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None:
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) is list:
        return [_yaml_value(f, typing.get_args(kind)[0], item) for item in (value if isinstance(value, list) else [value])]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool and isinstance(value, bool) or kind is int and number and isinstance(value, int):
        return value
    if kind is float and number:
        return float(value)
    if kind is str and (isinstance(value, str) or number):
        return str(value)
    raise TypeError


def _typed_yaml(config_cls: type, path: str, values: dict) -> dict:
    """The YAML file's settings as their fields' types, every wrong one reported at once by key."""
    hints, fields = typing.get_type_hints(config_cls), {f.name: f for f in dataclasses.fields(config_cls)}
    typed, problems = {}, []
    for key, value in values.items():
        f = fields[key]
        try:
            typed[key] = _yaml_value(f, hints[key], value)
        except (TypeError, OverflowError):  # OverflowError: an integer too large for a float
            problems.append(f"{path}: {key}: expected {_describe(hints[key])}, got {reprlib.repr(value)}")
            continue
        choices = f.metadata.get("choices")
        if choices and typed[key] not in choices:
            problems.append(f"{path}: {key}: {reprlib.repr(value)} is not one of {', '.join(choices)}")
    if problems:
        raise problems_error(problems)
    return typed


def _yaml_defaults(parser: argparse.ArgumentParser, path: str) -> None:
    """Make a YAML file's keys the parser's defaults; an `env:` mapping sets environment variables."""
    import yaml

    try:
        with open(path, "rb") as f:  # bytes: PyYAML reads a BOM and names a byte that is not UTF-8
            values = yaml.safe_load(f)
    except OSError as exc:
        parser.error(f"cannot read {path}: {exc.strerror}")
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of more than 4300 digits
        parser.error(f"{path}: not valid YAML ({' '.join(str(exc).split())})")  # on one line
    except RecursionError:
        parser.error(f"{path}: nested too deeply to be a config file")
    if not isinstance(values, dict):
        parser.error(f"Config file {path} must contain a YAML mapping.")
    env = values.pop("env", {})
    if not isinstance(env, dict) or not all(isinstance(key, str) and isinstance(value, str | int | float | bool)
                                            for key, value in env.items()):
        parser.error(f"{path}: `env` should be a mapping of variable names to values.")
    dests = {action.dest for action in parser._actions}
    unknown = [key for key in values if key not in dests or key in ("help", "config", "_config_cls")]
    if unknown:
        parser.error(f"Unknown arguments from config file: {[f'--{key}' for key in unknown]}. "
                     "Remove them, or check their spelling against --help.")
    parser.set_defaults(**_typed_yaml(parser.get_default("_config_cls"), path, values))
    try:
        os.environ.update({key: str(value) for key, value in env.items()})
    except ValueError as exc:  # a NUL byte, an `=` in a name, a lone surrogate
        parser.error(f"{path}: env: {exc}")


def parse_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> ConfigT:
    args = [part for arg in (sys.argv[1:] if argv is None else argv)  # `--config=FILE` is `--config FILE`
            for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if args.count("--config") > 1:
        parser.error("--config is given twice: give one FILE.yaml")
    if "--config" in args:
        at = args.index("--config")
        if at + 1 >= len(args):
            parser.error("--config needs a FILE.yaml")
        _yaml_defaults(parser, args[at + 1])
        del args[at:at + 2]
    namespace = vars(parser.parse_args(args))
    config_cls = namespace.pop("_config_cls")
    namespace.pop("config", None)
    return config_cls(**namespace)


def print_config(config: object, title: str) -> None:
    if not is_main_process():
        return
    print(f"== {title}")
    print(json.dumps(dataclasses.asdict(config), indent=2, default=str))


def run_stage(main: Callable[[ConfigT], object], parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn expected failures into a one-line message and a non-zero exit."""
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        main(parse_config(parser, argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SecurityError as exc:  # from any template a model or run folder brings (tokenizer_config.json, prompt_style.json)
        print(f"error: a chat template tried what Jinja's sandbox forbids ({exc}); nothing of it ran. Use a model or "
              "run folder whose template you trust, or --prompt-style chatml", file=sys.stderr)
        return 2
    except TemplateError as exc:  # one that does not render (a syntax error, its own raise_exception)
        print(f"error: a chat template failed to render ({type(exc).__name__}: {exc}); check the template of the model "
              "or run folder given, or use --prompt-style chatml", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is on disk; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
