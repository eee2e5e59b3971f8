"""What every command line shares: numeric options checked at parse time, one-line errors, Ctrl-C.

* ``ArgumentParser``: argparse whose errors are one line (``prog: error: ...``) and exit code 2.
* ``int_in`` / ``float_in``: option types that refuse values out of a sane range (and NaN).
* ``guarded``: wraps a ``main(argv) -> int``; a user error (``cad.io.InputError``, which
  ``cad.config.ConfigError`` and ``cad.data.DatasetUnavailable`` are) prints ``error: ...`` and
  returns 2; Ctrl-C prints how to resume and returns 130.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Callable

from cad.io import InputError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, lo: float, hi: float, lo_open: bool) -> Callable[[str], float]:
    noun = "an integer" if kind is int else "a number"
    bounds = f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} {bounds}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (lo_open and value == lo) or value > hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected {noun} {bounds}")
        return value

    parse.__name__ = kind.__name__
    return parse


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An integer option in ``[lo, hi]``."""
    return _number(int, lo, hi, False)


def float_in(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], float]:
    """A finite float option in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    return _number(float, lo, hi, lo_open)


# Ranges shared by several tools.
TIMEOUT = float_in(0.0, 3600.0, lo_open=True)  # seconds per program
WORKERS = int_in(1, 256)  # sandbox processes
SEED = int_in(0, 2**32 - 1)
LIMIT = int_in(1, 10**9)


def guarded(resume_hint: str = "") -> Callable:
    """Decorate a ``main(argv) -> int``: user errors exit 2 with one line, Ctrl-C exits 130."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except InputError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"interrupted{': ' + resume_hint if resume_hint else ''}", file=sys.stderr)
                return 130

        return run

    return wrap
