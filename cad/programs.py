"""Program text utilities: the canonical form for training and numeric perturbation.

Canonical form (``canonicalize``): every decimal number rounded to ``decimals`` places and written
without float noise (``6.123233995736766e-17`` becomes ``0.0``), trailing zeros dropped, no spaces
around ``=`` or after ``,``, GenCAD's ``# Generating a workplane`` comments dropped (optional),
blank lines removed. The program builds the same solid (tests check exact IoU >= 0.99) and is
shorter, which shortens training targets.
"""
from __future__ import annotations

import re

import numpy as np

# A Python float or int literal, optionally signed, not part of an identifier (wp_sketch0).
NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
COMMENT_RE = re.compile(r"^\s*#.*$", re.MULTILINE)


def format_number(value: float, decimals: int = 4) -> str:
    """Shortest fixed-point text of ``value`` rounded to ``decimals`` places ("0.0", "-0.5")."""
    x = round(float(value), decimals)
    if x == 0:
        return "0.0"
    text = f"{x:.{decimals}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def canonicalize(code: str, decimals: int = 4, keep_comments: bool = False, grid: int | None = None) -> str:
    """The canonical training form of a program (see module docstring).

    With ``grid`` (e.g. 256, DeepCAD's 8-bit quantisation), numbers that are exact multiples of
    1/grid are written exactly (``0.0234375``) instead of being rounded to ``decimals``.
    """
    lines = []
    for line in code.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not keep_comments):
            continue
        if stripped.startswith("#"):
            lines.append(stripped)
            continue
        body = NUMBER_RE.sub(lambda m: _canon_literal(m.group(0), decimals, grid), stripped)
        body = re.sub(r"\s*=\s*(?!=)", "=", body)
        body = re.sub(r"\s*,\s*", ",", body)
        body = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", body))
        lines.append(body)
    return "\n".join(lines) + "\n"


def on_grid(value: float, grid: int) -> bool:
    """Is ``value`` an exact multiple of 1/grid (up to float noise)?"""
    return abs(value * grid - round(value * grid)) < 1e-6


def _canon_literal(text: str, decimals: int, grid: int | None = None) -> str:
    if re.fullmatch(r"-?\d+", text):
        return text  # integers (loop counts, sketch indices) stay as they are
    value = float(text)
    if grid and on_grid(value, grid):
        return format_number(round(value * grid) / grid, 10)
    return format_number(value, decimals)


def perturb(code: str, rng: np.random.Generator, sigma: float = 0.1, decimals: int = 6, share: float = 1.0) -> str:
    """Scale non-zero decimal literals by (1 + N(0, sigma)): a nearby, usually valid program.

    Each distinct literal is scaled with probability ``share`` (all of them by default). Unit-vector
    components (|x| close to 1 or 0) are kept so sketch planes stay orthonormal, and equal literals
    map to equal values, so aligned points stay aligned and loops stay closed.
    """
    mapping: dict[str, str] = {}

    def repl(m: re.Match) -> str:
        text = m.group(0)
        if re.fullmatch(r"-?\d+", text):
            return text
        x = float(text)
        if abs(x) < 1e-9 or abs(abs(x) - 1.0) < 1e-9:
            return text
        if text not in mapping:
            scale = 1.0 + sigma * rng.standard_normal() if share >= 1.0 or rng.random() < share else 1.0
            mapping[text] = format_number(x * scale, decimals) if scale != 1.0 else text
        return mapping[text]

    return NUMBER_RE.sub(repl, code)
