"""The boundary between a command and the library: logging set-up and errors → exit codes.

Both ``contra <command>`` (:mod:`contra.cli`) and the stage modules run as ``python -m
contra.pretrain`` / ``python -m contra.finetune`` (what torchrun and SLURM tasks start) go through
:func:`guarded`, so a known input problem ends the same way everywhere: one line
``contra: error: <file>: <what>`` on stderr and exit code 2, never a traceback. Only this module
and :mod:`contra.cli` print; the library logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from contra.config import ConfigError

EXIT_USER_ERROR = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is already a complete one-line explanation for the user."""
    from contra.atomic import DiskFullError
    from contra.checkpoint import CheckpointError
    from contra.data.errors import DataFormatError
    from contra.demo import DemoError
    from contra.dist import DistEnvError
    from contra.evaluation import EvaluationInputError
    from contra.mano.io import ManoFileError
    from contra.report import ReportError

    return (ConfigError, ManoFileError, EvaluationInputError, DataFormatError, FileNotFoundError,
            CheckpointError, DistEnvError, DemoError, ReportError, DiskFullError)


#: libraries whose INFO lines are noise for a user (faiss's CPU-feature probing, openTSNE's
#: method choices); their warnings still show
QUIET_LIBRARIES = ("faiss.loader", "openTSNE")


def configure_logging(level: str = "INFO") -> None:
    """Rank-tagged log lines; ranks other than 0 log warnings and errors only."""
    from contra.dist import DistEnvError, discover

    try:
        rank = discover().rank
    except DistEnvError:
        rank = 0
    numeric = logging.getLevelName(level)
    effective = numeric if rank == 0 else max(logging.WARNING, numeric)
    logging.basicConfig(level=effective,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for chatty in QUIET_LIBRARIES:  # their INFO lines say nothing a user acts on
        logging.getLogger(chatty).setLevel(max(logging.WARNING, numeric))


def exit_code(exc: BaseException) -> int:
    """The exit code a failure ends with: 2 for a known user error, 1 for anything else."""
    return EXIT_USER_ERROR if isinstance(exc, user_errors()) else 1


def one_line(exc: BaseException) -> str:
    """The user's one-line message of ``exc``, also when it was raised in a worker process.

    A DataLoader worker's exception reaches the main process rebuilt as the same type with the
    message ``Caught X in DataLoader worker process N.\nOriginal Traceback ...``; its last
    ``module.X: message`` line is the original message.
    """
    text = str(exc)
    if "\n" not in text or not text.startswith("Caught "):
        return text
    cls = type(exc)
    names = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    for line in reversed(text.splitlines()):
        for name in names:
            if line.startswith(name):
                return line[len(name):]
    return text.splitlines()[-1]


_last_error: str | None = None


def last_error() -> str | None:
    """The last one-line error :func:`guarded` printed in this process (for launchers that run
    a stage in-process, e.g. a submitit task, and report it again)."""
    return _last_error


def guarded(func: Callable[[], int]) -> int:
    """Run ``func``; a known user error becomes one stderr line and exit code 2.

    In a multi-rank job only the first rank to fail reports (:func:`contra.dist.claim_failure`);
    the others, whose error is usually only the lost connection to it, exit with its code.
    """
    from contra.dist import PeerFailure

    global _last_error
    try:
        return func()
    except user_errors() as exc:
        _last_error = one_line(exc)
        print(f"contra: error: {_last_error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except PeerFailure as exc:
        logging.getLogger(__name__).info("%s", exc)
        logging.getLogger(__name__).debug("its own error", exc_info=exc.__cause__)
        return exc.code


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus ``key.sub=value`` overrides, as every stage takes them."""
    p.add_argument("--config", type=Path, default=None, help="YAML config file (default: built-in)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="override config entries, e.g. batch_size=64 optim.lr=0.03")


def stage_main(prog: str, description: str, run: Callable[[Path | None, list[str]], int],
               argv: Sequence[str] | None = None) -> int:
    """``python -m contra.<stage> --config FILE [key=value ...]`` for a stage's ``run``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="library log level")
    add_config_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    configure_logging(args.log_level)
    return guarded(lambda: run(args.config, list(args.overrides)))
