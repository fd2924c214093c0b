"""``vlm-sweep``: the one console entry point, at the top of the packages. It mounts each package's own commands
(``vlm_core.commands``, ``data_pipeline.commands``, ``sweeps.commands``); their flags are generated from typed
signatures and dataclasses (jsonargparse), never written by hand.

    vlm-sweep run --preset local                 # the main job on the embedded default (CPU, offline)
    vlm-sweep train --preset tiny --data.train corpus/sharegpt4v_sample.jsonl --data.images corpus/images --out runs/t
    vlm-sweep chat --checkpoint runs/main/stage2/final --image photo.jpg "What is in the picture?"
    vlm-sweep export --checkpoint runs/main/stage2/final --out exported/
    vlm-sweep data sample-corpus --out corpus
    vlm-sweep data build --source corpus/sharegpt4v_sample.jsonl --images corpus/images --out data
    vlm-sweep assets prepare                     # convert the packaged SmolLM2 once (cached)
    vlm-sweep assets convert SRC DST             # a pickle-only model folder → a safetensors folder DST
    vlm-sweep assets download --preset paper --to DIR   # the preset's hub models at their pinned revisions
    vlm-sweep sweep --data data --images corpus/images --preset local --grid paper19 --stage all
    vlm-sweep report runs/sweep
    vlm-sweep rehearse --cluster cluster.yaml -- sweep --preset paper --backend a100-40g --grid paper19
    vlm-sweep eval CHECKPOINT --questions corpus/eval_easyvqa.jsonl --images corpus/images
    python -m sweeps.cli --help                  # the same entry point

``--preset`` picks a named ``VLMConfig`` (``vlm_core.presets``); any ``--model.*`` flag overrides one field of it,
e.g. ``--preset local --model.projector.name dense_connector --model.format.mode raw``. A ``preset:`` key in a
``--config FILE`` counts as well (the last one given, flag or file, wins).

Flags are typed as people type them: ``--check-images`` and ``--check_images`` are the same flag (dashes and
underscores both work, in every part of a dotted name: ``--train.max-steps``), and a yes/no option is a switch:
``--dry-run`` alone means ``--dry_run true``, ``--no-feature-cache`` means ``--feature_cache false`` (an explicit
``true`` / ``false`` after the flag still works). ``vlm-sweep --version`` prints the version and the pinned stack.

Every error the project raises on purpose derives from ``vlm_core.base.errors.VlmSweepError`` and already names what is
wrong and the fix: it is printed in one line, without a traceback, with exit code 2; so are the OS errors that are
the machine's state (a missing file, no space, no permission).
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import platform
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

import data_pipeline.commands
import vlm_core.commands
from vlm_core.base.errors import VlmSweepError
from vlm_core.base.logs import configure_logging
from vlm_core.presets import get_preset

from . import commands as sweep_commands
from .argv import conventional_argv

log = logging.getLogger("vlm_sweep")

PACKAGES = (vlm_core.commands, data_pipeline.commands, sweep_commands)
"""Whose commands ``vlm-sweep`` mounts, in this order."""


def _merged(table: str) -> dict[str, Any]:
    return {k: v for m in PACKAGES for k, v in getattr(m, table, {}).items()}


def _merged_groups() -> dict[str, tuple[str, dict[str, Callable]]]:
    """Every package's command groups; a group several packages add to (``show``) holds all their commands."""
    groups: dict[str, tuple[str, dict[str, Callable]]] = {}
    for m in PACKAGES:
        for name, (description, commands) in getattr(m, "GROUPS", {}).items():
            groups.setdefault(name, (description, {}))[1].update(commands)
    return groups


COMMANDS: dict[str, Callable] = _merged("COMMANDS")
GROUPS: dict[str, tuple[str, dict[str, Callable]]] = _merged_groups()
"""Command groups (``vlm-sweep GROUP COMMAND``): help text and their commands."""
CONFIG_CLASSES: dict[str, type] = _merged("CONFIG_CLASSES")
"""Commands whose flags are one dataclass's fields (at top level), keyed by command path."""
POSITIONAL: dict[str, tuple[str, ...]] = _merged("POSITIONAL")
DEFAULT_PRESET = "tiny"

# OS errors that are the machine's state, not a bug: said in one line with the path, without a traceback
OS_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.ENOSPC: "no space left",
             errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded"}


def _setup_env() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure_logging()


def _preset_in_config(value: str) -> str | None:
    """The ``preset`` key of a ``--config`` value (a YAML / JSON file, or the text itself), if it has one."""
    try:
        path = Path(value).expanduser()
        data = yaml.safe_load(path.read_text() if path.is_file() else value)
    except (OSError, yaml.YAMLError):  # jsonargparse says what is wrong with it when it parses the file
        return None
    found = data.get("preset") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def preset_from_argv(argv: list[str]) -> str:
    """The preset whose model config gives ``--model.*`` its defaults: the last ``--preset`` flag or ``preset:`` key
    of a ``--config`` file, in command-line order (later ones override earlier ones, as jsonargparse does)."""
    preset = DEFAULT_PRESET
    for i, a in enumerate(argv):
        key, eq, value = a.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if key == "--preset" and value:
            preset = value
        elif key == "--config" and value:
            preset = _preset_in_config(value) or preset
    return preset


def _command_parser(path: str, fn: Callable, preset: str):
    from jsonargparse import ActionConfigFile, ArgumentParser

    sub = ArgumentParser(description=fn.__doc__.split("\n")[0])
    sub.add_argument("--config", action=ActionConfigFile,
                     help="A YAML / JSON file of this command's options (flags after it override it); unknown "
                          "keys and bad values are named")
    if path in CONFIG_CLASSES:
        sub.add_class_arguments(CONFIG_CLASSES[path], None)
        return sub
    positional = POSITIONAL.get(path, ())
    sub.add_function_arguments(fn, fail_untyped=True, skip=set(positional))
    defaults = inspect.signature(fn).parameters
    for arg in positional:
        default = defaults[arg].default
        optional = {} if default is inspect.Parameter.empty else {"nargs": "?", "default": default}
        sub.add_argument(arg, type=typing.get_type_hints(fn)[arg], help=f"the {arg}", **optional)
    if "model" in fn.__annotations__:
        sub.set_defaults(model=get_preset(preset).to_dict())
    return sub


def build_parser(argv: list[str]):
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help text
    parser = ArgumentParser(prog="vlm-sweep", description="LLaVA-style visual instruction tuning sweeps on Ray. "
                            "Flags take dashes or underscores; yes/no flags are switches (--dry-run, "
                            "--no-feature-cache). vlm-sweep --version: the version and the pinned stack.")
    subs = parser.add_subcommands(dest="command")
    preset = preset_from_argv(argv)
    for name, fn in COMMANDS.items():
        subs.add_subcommand(name, _command_parser(name, fn, preset), help=fn.__doc__.split("\n")[0])
    for group, (description, commands) in GROUPS.items():
        group_parser = ArgumentParser(description=description)
        subs.add_subcommand(group, group_parser, help=description)
        group_subs = group_parser.add_subcommands(dest=f"{group}_command")
        for name, fn in commands.items():
            group_subs.add_subcommand(name, _command_parser(f"{group} {name}", fn, preset),
                                      help=fn.__doc__.split("\n")[0])
    return parser


def version_text() -> str:
    """``vlm-sweep --version``: this package's version, Python's, and each pinned dependency's installed version
    (with the pin beside it where they differ)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    lines = [f"vlm-sweep {version('vlm-sweep')} (Python {platform.python_version()})"]
    for requirement in requires("vlm-sweep") or []:
        if "extra ==" in requirement:  # the test extra is not the stack
            continue
        name, _, pin = requirement.partition("==")
        name, pin = name.split("[")[0].strip(), pin.split(";")[0].strip()
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        same = installed.split("+")[0] == pin  # 2.13.0+cpu is the 2.13.0 pin's CPU build
        lines.append(f"  {name:22} {installed}" + ("" if same else f"   (pinned {pin or 'unpinned'})"))
    return "\n".join(lines)


def command_after_dashes(argv: list[str]) -> list[str]:
    """``rehearse [flags] -- sweep ...``: what follows ``--`` becomes the ``--command`` list of a command that
    takes another command (``sweeps.commands.TAKES_A_COMMAND``)."""
    if argv[:1] and argv[0] in sweep_commands.TAKES_A_COMMAND and "--" in argv:
        i = argv.index("--")
        return [*argv[:i], "--command", json.dumps(argv[i + 1:])]
    return argv


def _dispatch(parser, argv: list[str]) -> Any:
    init = parser.instantiate(parser.parse_args(argv))
    if init.command in GROUPS:
        group = init[init.command]
        name = group[f"{init.command}_command"]
        path, fn, kwargs = f"{init.command} {name}", GROUPS[init.command][1][name], group[name]
    else:
        path, fn, kwargs = init.command, COMMANDS[init.command], init[init.command]
    kwargs = {k: v for k, v in dict(vars(kwargs)).items() if k != "config"}  # --config: already merged
    if path in CONFIG_CLASSES:
        return fn(CONFIG_CLASSES[path](**kwargs))
    return fn(**{k: v for k, v in kwargs.items() if k in fn.__code__.co_varnames})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):
        print(version_text())
        return 0
    _setup_env()
    try:
        argv = command_after_dashes(argv)
        parser = build_parser(argv)
        _dispatch(parser, conventional_argv(parser, argv))
    except VlmSweepError as e:
        print(f"vlm-sweep: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if isinstance(e, FileNotFoundError):  # a file the user named is not there: the message names it
            print(f"vlm-sweep: error: {e}", file=sys.stderr)
            return 2
        if e.errno not in OS_ERRNOS:
            raise
        print(f"vlm-sweep: error: {e.filename or ''}: {OS_ERRNOS[e.errno]} ({e.strerror}); free space, fix the "
              f"permissions or choose another output folder", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
