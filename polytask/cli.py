"""``polytask`` command line: one subcommand per module in ``polytask/commands``.

Each module there defines ``register(subparsers)``, which adds its parser and sets
``func=run`` (a function taking the parsed args and returning an exit code). A user mistake
raises ``PolytaskError``: printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from polytask import __version__, commands
from polytask.errors import PolytaskError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polytask", description="Train, customize and serve multi-task language models."
    )
    parser.add_argument("--version", action="version", version=f"polytask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"polytask.commands.{info.name}").register(sub)
    return parser


class ConsoleHandler(logging.Handler):
    """What a person sees of the library's log: each record's message as one line. The training
    loop's reports go to stdout with the run's other output, everything else to stderr; the stream
    is looked up at each record, so a redirected ``sys.stdout`` is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            to_stdout = record.name.startswith("polytask.train.") and record.levelno < logging.WARNING
            stream = sys.stdout if to_stdout else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging() -> None:
    """INFO and above of the ``polytask`` loggers, shown by one ``ConsoleHandler`` (once per process)."""
    logger = logging.getLogger("polytask")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PolytaskError as e:
        print(f"polytask {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"polytask {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
