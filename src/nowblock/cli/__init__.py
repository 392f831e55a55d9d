"""The nowblock command: simulate, serve, demo and study.

Each sub-command has its module here (``nowblock.cli.simulate``, ``nowblock.cli.serve``,
``nowblock.cli.demo``, ``nowblock.cli.study``); this one parses the arguments, sets up logging
and turns every error into one line on stderr and a non-zero exit code (the traceback only
with ``--debug``).
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

#: The log level of each sub-command when ``--log-level`` is not given: the live commands show
#: their control steps (one INFO line a step), the batch commands only warnings.
DEFAULT_LOG_LEVEL = {"simulate": "WARNING", "serve": "INFO", "demo": "WARNING", "study": "WARNING"}

#: Exit code of an error in what the user gave (a file, an option); 1 is left for failures.
EXIT_BAD_INPUT = 2

_DESCRIPTION = "Share a city block's grid connection among its EV charging points."


class UsageError(SystemExit):
    """A bad option or argument on the command line: one line on stderr, exit status 2.

    The message names the option and what was expected; :func:`main` prints it after the
    sub-command's name and lets the exception end the program with status 2, as argparse does
    for the options it checks itself.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = EXIT_BAD_INPUT  # the exit status; str(self) stays the message


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--log-level`` and ``--debug``, accepted before and after the sub-command."""
    # On the sub-commands the defaults are SUPPRESS, so a value given before the sub-command
    # is not overwritten by the sub-parser's default.
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--log-level", default=default, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING or ERROR (default: INFO for serve, WARNING otherwise)")
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show the full traceback of an error (and log at DEBUG)")


def _summary(module) -> str:
    """The first line of a module docstring, as plain text for ``--help``."""
    line = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    return line.replace("``", "").rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command whose module is installed."""
    parser = argparse.ArgumentParser(prog="nowblock", description=_DESCRIPTION,
                                     epilog="Documentation: docs/index.md (the built site: python3 -m sphinx docs "
                                            "site). Rows of CSV files are counted as an editor shows them: the "
                                            "header is line 1.")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (mod, add, _run) in _COMMANDS.items():
        try:
            module = importlib.import_module(mod)
            adder = getattr(module, add)
        except Exception as exc:  # noqa: BLE001 - one broken sub-command must not take the others down
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(_unavailable=f"nowblock {name} is unavailable: {type(exc).__name__}: {exc}")
            continue
        summary = _summary(module)
        p = sub.add_parser(name, help=summary, description=summary)
        _common(p, top=False)
        adder(p)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level_name = "DEBUG" if args.debug else (args.log_level or DEFAULT_LOG_LEVEL.get(args.command, "WARNING"))
    level = getattr(logging, str(level_name).upper(), None)
    if not isinstance(level, int):
        raise UsageError(f"--log-level {level_name!r} is not one of DEBUG, INFO, WARNING, ERROR")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if level > logging.DEBUG:
        # The ocpp library logs every frame at INFO, websockets every connection; that drowns the
        # controller's one line a step.
        for noisy in ("ocpp", "websockets"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is wrong" (exit code 2, one line, no traceback)."""
    from nowblock.block.scenario import ScenarioError
    from nowblock.block.sessions import SessionsError
    from nowblock.block.site import SiteError

    kinds: list[type[BaseException]] = [SiteError, SessionsError, ScenarioError, FileNotFoundError,
                                        IsADirectoryError, NotADirectoryError, PermissionError]
    for mod, name in (("nowblock.studies.spec", "StudyError"), ("nowblock.api.auth", "TokenConfigError"),
                      ("nowblock.store", "StoreFileError")):
        try:
            kinds.append(getattr(importlib.import_module(mod), name))
        except Exception:  # noqa: BLE001 - an optional extra that is not installed raises nothing
            pass
    return tuple(kinds)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nowblock`` console script; returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``nowblock`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 for a bad input file, 1 for any other failure, 130 when interrupted.

    Raises
    ------
    SystemExit
        With status 2 for a bad option, after its one line on stderr (argparse's own errors,
        and :class:`UsageError`: an unknown policy, a bad duration or ``--days``, a missing
        scenario folder, a sessions file without sessions).
    """
    args = build_parser().parse_args(argv)
    prog = f"nowblock {args.command}"
    try:
        _setup_logging(args)
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return EXIT_BAD_INPUT
    mod, _add, run = _COMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(mod), run)(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise  # SystemExit with status 2, like argparse's own errors
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes one line
        if args.debug:
            raise
        bad_input = isinstance(exc, user_errors())
        text = str(exc) if bad_input else f"{type(exc).__name__}: {exc}"
        hint = "" if bad_input else " (an internal error: run again with --debug for the traceback and report it)"
        print(f"{prog}: {text.splitlines()[0] if text else type(exc).__name__}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT if bad_input else 1
