"""The ``nowblock`` command: ``simulate``, ``serve``, ``demo`` and ``study``.

Each sub-command has its module here (``nowblock.cli.simulate``, ``nowblock.cli.serve``,
``nowblock.cli.demo``, ``nowblock.cli.study``); this one only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# sub-command -> (module, function that adds its arguments, function that runs it)
_COMMANDS = {
    "simulate": ("nowblock.cli.simulate", "add_arguments", "run"),
    "serve": ("nowblock.cli.serve", "add_arguments", "run"),
    "demo": ("nowblock.cli.demo", "add_arguments", "run"),
    "study": ("nowblock.cli.study", "add_arguments", "run"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command whose module is installed."""
    parser = argparse.ArgumentParser(prog="nowblock", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (mod, add, _run) in _COMMANDS.items():
        try:
            module = importlib.import_module(mod)
            adder = getattr(module, add)
        except Exception as exc:  # noqa: BLE001 - one broken sub-command must not take the others down
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(_unavailable=f"nowblock {name} is unavailable: {type(exc).__name__}: {exc}")
            continue
        p = sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        adder(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nowblock`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        # The ocpp library logs every frame at INFO; that drowns the controller's step log.
        logging.getLogger("ocpp").setLevel(logging.WARNING)
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    mod, _add, run = _COMMANDS[args.command]
    return int(getattr(importlib.import_module(mod), run)(args) or 0)

