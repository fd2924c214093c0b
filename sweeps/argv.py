"""Command lines as people type them, turned into the form jsonargparse parses (``sweeps.cli`` and the commands that
read another command's line, ``vlm-sweep rehearse -- sweep ...``)."""

from __future__ import annotations

import typing
from typing import Any

BOOL_VALUES = ("true", "false")
"""What may follow a yes/no flag as its value; anything else after it (another flag, a positional) makes it a
switch."""


def _command_parser_of(parser, argv: list[str]):
    """The parser of the command ``argv`` names (a group's command included), or None before one is named; a parser
    without commands is its own."""
    if getattr(parser, "_subcommands_action", None) is None:
        return parser
    current, found = parser, None
    for token in argv:
        action = getattr(current, "_subcommands_action", None)
        if action is None or token.startswith("-"):
            continue
        if token in action._name_parser_map:
            current = found = action._name_parser_map[token]
    return found


def _is_bool(action) -> bool:
    hint = getattr(action, "_typehint", None)
    return action.type is bool or hint is bool or hint == typing.Optional[bool]


def conventional_argv(parser, argv: list[str]) -> list[str]:
    """``argv`` in the form jsonargparse parses: option names with underscores (``--dry-run`` → ``--dry_run``,
    ``--train.max-steps`` → ``--train.max_steps``; values untouched), a yes/no flag given alone followed by
    ``true`` (``--resume`` → ``--resume true``), ``--no-X`` of a yes/no flag X as ``--X false``. Everything after a
    bare ``--`` is left as it is."""
    command = _command_parser_of(parser, argv)
    actions = command._actions if command is not None else []
    options = {o for a in actions for o in a.option_strings}
    switches = {o for a in actions if _is_bool(a) for o in a.option_strings if o.startswith("--")}
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, eq, value = token.partition("=")
        name = "--" + name[2:].replace("-", "_")
        following = argv[i + 1] if i + 1 < len(argv) else None
        if not eq and name not in options and name.startswith("--no_") and f"--{name[5:]}" in switches:
            out += [f"--{name[5:]}", "false"]
        elif not eq and name in switches and (following is None or following.lower() not in BOOL_VALUES):
            out += [name, "true"]
        else:
            out.append(name + eq + value)
    return out


def parse_dataclass(cls: type, argv: list[str]) -> Any:
    """An instance of the dataclass ``cls`` from a command line of its flags (and ``--config FILE``), read as the CLI
    reads a command whose flags are its fields: unknown flags and bad values are named."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=cls.__name__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(cls, None)
    parsed = parser.parse_args(conventional_argv(parser, argv))
    kwargs = {k: v for k, v in dict(vars(parser.instantiate(parsed))).items() if k != "config"}
    return cls(**kwargs)
