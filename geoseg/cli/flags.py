"""Library messages as the command line says them: flags instead of parameter names."""

from __future__ import annotations

import re

import click


def flag_for(command: click.Command, field: str) -> str | None:
    """The long flag of `command` that sets the library parameter `field`, if any.

    >>> from geoseg.cli.main import cli
    >>> flag_for(cli.commands["predict"], "batch_size"), flag_for(cli.commands["predict"], "x")
    ('--batch-size', None)
    """
    dashed = "--" + field.replace("_", "-")
    for param in command.params:
        if isinstance(param, click.Option) and (param.name == field or dashed in param.opts):
            longs = [o for o in param.opts if o.startswith("--")]
            return dashed if dashed in longs else (longs[0] if longs else None)
    return None


_PARAM_VALUE = re.compile(r"\b([a-z][a-z0-9_]*)=(True\b|'[^']*'|\"[^\"]*\"|[A-Za-z0-9_.:/-]+)")


def cli_message(text: str, field: str | None, command: click.Command) -> str:
    """A library message as the command line says it: flags instead of parameters.

    Library messages name parameters the way Python callers pass them: a leading
    parameter (``batch_size must be >= 1``, from ``ConfigError.field``) and
    ``name=value`` hints (``pass overwrite=True``, ``use device='cpu'``).  On the
    command line those become ``--batch-size must be >= 1``, ``pass --overwrite`` and
    ``use --device cpu``; parameters the command has no flag for stay as they are.

    >>> from geoseg.cli.main import cli
    >>> predict = cli.commands["predict"]
    >>> cli_message("exists; pass overwrite=True to replace it", None, predict)
    'exists; pass --overwrite to replace it'
    >>> cli_message("no GPU; use device='cpu'", None, predict)
    'no GPU; use --device cpu'
    >>> cli_message("batch_size must be >= 1, got 0", "batch_size", predict)
    '--batch-size must be >= 1, got 0'
    """
    if field and text.startswith(field):
        flag = flag_for(command, field)
        if flag is not None:
            text = flag + text[len(field) :]

    def swap(m: re.Match[str]) -> str:
        flag = flag_for(command, m.group(1))
        if flag is None:
            return m.group(0)
        value = m.group(2)
        if value == "True":
            return flag
        return f"{flag} {value.strip(chr(39)).strip(chr(34))}"

    return _PARAM_VALUE.sub(swap, text)
