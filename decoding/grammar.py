"""The CadQuery grammar the model writes: validation with error positions, and repair.

``CADQUERY_LARK`` covers GenCAD-Code's subset exactly (workplanes on ``cq.Plane``s, loops of
``moveTo``/``lineTo``/``threePointArc``/``circle``/``close``, ``add``, ``extrude`` with
``both=True``, ``union``/``cut``) plus the common API beyond it: ``box``, ``rect``, ``polygon``,
``polyline``, ``hole``, ``fillet``, ``chamfer``, ``workplane``, face/edge selectors,
``translate``, ``rotate``, ``intersect`` and friends. The same text is the grammar for
constrained decoding (``decoding.constrained``), so whatever validates here can be generated
there and vice versa.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from lark import Lark, UnexpectedInput

from cad.programs import NUMBER_RE

METHODS = [
    # GenCAD-Code's subset
    "moveTo", "lineTo", "threePointArc", "circle", "close", "add", "extrude", "union", "cut",
    # the common API beyond it
    "intersect", "box", "rect", "polygon", "polyline", "hole", "cboreHole", "cskHole", "fillet",
    "chamfer", "workplane", "faces", "edges", "vertices", "wires", "solids", "translate", "rotate",
    "center", "pushPoints", "rarray", "polarArray", "revolve", "sphere", "cylinder", "mirror",
    "mirrorX", "mirrorY", "shell", "hLine", "vLine", "hLineTo", "vLineTo", "line", "radiusArc",
    "sagittaArc", "tangentArcPoint", "spline", "ellipse", "slot2D", "offset2D", "twistExtrude",
    "sweep", "loft", "split", "val", "vals", "first", "last", "end", "tag", "transformed",
]
CONSTRUCTORS = ["Workplane", "Plane", "Vector", "Location"]

CADQUERY_LARK = r"""
start: HEADER (NL stmt)* NL?
HEADER: "import cadquery as cq"
stmt: COMMENT | NAME "=" value
value: chain | NUMBER | STRING | tuple | list | "True" | "False" | "None"
chain: NAME trailer*
trailer: "." (METHOD | CTOR) "(" args? ")"
args: arg ("," arg)*
arg: value | NAME "=" value
tuple: "(" value "," (value ("," value)*)? ")"
list: "[" (value ("," value)*)? "]"
CTOR: %s
METHOD: %s
NAME: /[a-zA-Z_][a-zA-Z0-9_]*/
NUMBER: /-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?/
STRING: /"[^"\n]*"/ | /'[^'\n]*'/
COMMENT: /#[^\n]*/
NL: /[ \t]*\n[ \t\n]*/
%%ignore /[ \t]+/
""" % (" | ".join(f'"{c}"' for c in CONSTRUCTORS), " | ".join(f'"{m}"' for m in sorted(METHODS, key=len, reverse=True)))


# GenCAD-Code's programs exactly, with arities and variable roles: a workplane on a plane of three
# vectors, loops that start with moveTo, bodies that add loops of their own sketch and extrude,
# and the final solid as a chain of union/cut. Constrained decoding with it cannot write a
# cq.Vector of five numbers or extrude a loop; it is the "full" grammar of the ablation.
GENCAD_LARK = r"""
start: HEADER (NL stmt)* NL?
HEADER: "import cadquery as cq"
stmt: COMMENT | sketch | loop | body | final
sketch: SKETCH "=" "cq.Workplane(" plane ")"
plane: "cq.Plane(" vector "," vector "," vector ")"
vector: "cq.Vector(" NUMBER "," NUMBER "," NUMBER ")"
loop: LOOP "=" SKETCH ".moveTo(" NUMBER "," NUMBER ")" segment*
segment: ".lineTo(" NUMBER "," NUMBER ")" | ".threePointArc(" point "," point ")" | ".circle(" NUMBER ")" | ".close()"
point: "(" NUMBER "," NUMBER ")"
body: SOLIDN "=" SKETCH (".add(" LOOP ")")+ ".extrude(" NUMBER ("," "both" "=" "True")? ")"
final: "solid" "=" (SOLIDN | "solid") ((".union(" | ".cut(" | ".intersect(") SOLIDN ")")*
SKETCH: /wp_sketch[0-9]+/
LOOP: /loop[0-9]+/
SOLIDN: /solid[0-9]+/
NUMBER: /-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?/
COMMENT: /#[^\n]*/
NL: /[ \t]*\n[ \t\n]*/
%ignore /[ \t]+/
"""
GRAMMARS = {"cadquery": CADQUERY_LARK, "gencad": GENCAD_LARK}


@lru_cache(maxsize=2)
def parser(grammar: str = "cadquery") -> Lark:
    return Lark(GRAMMARS[grammar], parser="lalr", lexer="contextual")


@dataclass
class Validation:
    ok: bool
    error: str = ""
    line: int | None = None
    column: int | None = None
    position: int | None = None  # character offset of the error


def validate(code: str, grammar: str = "cadquery") -> Validation:
    """Does ``code`` belong to the grammar (``cadquery`` or ``gencad``)? If not, where does it stop parsing?"""
    text = code if code.endswith("\n") else code + "\n"
    try:
        parser(grammar).parse(text)
        return Validation(True)
    except UnexpectedInput as exc:
        return Validation(False, str(exc).splitlines()[0][:200], exc.line, exc.column, getattr(exc, "pos_in_stream", None))


@dataclass
class Repair:
    code: str
    fixes: list[str] = field(default_factory=list)
    ok: bool = False


_ASSIGN = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)")
_BODY = re.compile(r"\.(extrude|union|cut|intersect|box|cylinder|sphere|revolve)\(")


def _balance(line: str) -> tuple[str, bool]:
    """Close unclosed brackets at the end of a line, drop unmatched closers."""
    out, stack = [], []
    pairs = {")": "(", "]": "["}
    changed = False
    for ch in line:
        if ch in "([":
            stack.append(ch)
        elif ch in ")]":
            if not stack or stack[-1] != pairs[ch]:
                changed = True
                continue
            stack.pop()
        out.append(ch)
    text = "".join(out).rstrip().rstrip(",.")
    if stack:
        changed = True
        text += "".join(")" if c == "(" else "]" for c in reversed(stack))
    return text, changed or text != line


_CALL = re.compile(r"\.(moveTo|lineTo|threePointArc|circle|close)\(((?:[^()]|\([^()]*\))*)\)")


def drop_zero_segments(line: str) -> tuple[str, int]:
    """Remove ``lineTo``/``threePointArc`` calls that end where the pen already is: zero-length
    edges make OpenCascade fail the whole face (``BRep_API: command not done``), the most
    frequent failure of a small model's otherwise grammatical loops."""
    calls = list(_CALL.finditer(line))
    if not calls or calls[0].group(1) != "moveTo":
        return line, 0
    pen, out, last, dropped = None, [], 0, 0
    for m in calls:
        nums = [float(x.group()) for x in NUMBER_RE.finditer(m.group(2))]
        name = m.group(1)
        end = tuple(nums[-2:]) if name in ("moveTo", "lineTo", "threePointArc") and len(nums) >= 2 else pen
        if name in ("lineTo", "threePointArc") and pen is not None and end == pen:
            out.append(line[last:m.start()])
            last, dropped = m.end(), dropped + 1
            continue
        pen = end
    out.append(line[last:])
    return "".join(out), dropped


_VECTOR2 = re.compile(r"cq\.Vector\(\s*(%s)\s*,\s*(%s)\s*\)" % (NUMBER_RE.pattern, NUMBER_RE.pattern))
_USE = re.compile(r"(?<![\w.])([A-Za-z_]\w*)(?!\w)(?!\s*=[^=])")
_STRING = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'")
_BUILTIN_NAMES = {"cq", "True", "False", "None"}


def complete_vectors(line: str) -> tuple[str, int]:
    """``cq.Vector(x, y)`` is ``cq.Vector(x, y, 0)`` in CadQuery; write the zero, which the typed
    GenCAD grammar requires (without it, repair would drop the workplane that the vector places)."""
    return _VECTOR2.subn(lambda m: f"cq.Vector({m.group(1)},{m.group(2)},0.0)", line)


def drop_undefined(lines: list[str]) -> tuple[list[str], list[str]]:
    """Drop each statement that uses a name no earlier kept statement defines (a dropped
    definition takes the statements built on it with it), so that repair never leaves a program
    that stops on a ``NameError``."""
    kept, fixes, defined = lines[:1], [], set(_BUILTIN_NAMES)
    for number, line in enumerate(lines[1:], start=2):
        m = _ASSIGN.match(line)
        if m is None:  # a comment or blank line
            kept.append(line)
            continue
        missing = sorted({name for name in _USE.findall(_STRING.sub("", line[m.end():])) if name not in defined})
        if missing:
            fixes.append(f"dropped line {number}: uses {', '.join(missing)}, not defined")
            continue
        defined.add(m.group(1))
        kept.append(line)
    return kept, fixes


def repair(code: str, grammar: str = "cadquery") -> Repair:
    """Fix frequent defects: missing import, unbalanced brackets, zero-length loop segments, a
    two-number ``cq.Vector`` under the typed grammar, a truncated last statement, statements left
    using a name whose definition was dropped, a missing final ``solid=`` assignment. Returns the
    repaired program and the fixes applied (none for a program without these defects)."""
    fixes: list[str] = []
    lines = [ln.rstrip() for ln in code.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != "import cadquery as cq":
        lines = [ln for ln in lines if ln.strip() != "import cadquery as cq"]
        lines.insert(0, "import cadquery as cq")
        fixes.append("added the import")
    for i in range(1, len(lines)):
        if lines[i].lstrip().startswith("#"):
            continue
        fixed, changed = _balance(lines[i])
        if changed:
            lines[i] = fixed
            fixes.append(f"balanced brackets on line {i + 1}")
        lines[i], dropped = drop_zero_segments(lines[i])
        if dropped:
            fixes.append(f"dropped {dropped} zero-length segment(s) on line {i + 1}")
        if grammar == "gencad":
            lines[i], completed = complete_vectors(lines[i])
            if completed:
                fixes.append(f"completed {completed} two-number cq.Vector(s) on line {i + 1}")
    # drop statements that still do not parse, from the end (a truncated tail)
    while len(lines) > 1 and not validate("\n".join(lines), grammar).ok:
        v = validate("\n".join(lines), grammar)
        bad = (v.line or len(lines)) - 1
        if bad < 1 or bad >= len(lines):
            bad = len(lines) - 1
        fixes.append(f"dropped unparsable line {bad + 1}")
        del lines[bad]
    lines, dropped_uses = drop_undefined(lines)
    fixes += dropped_uses
    assigned = [(m.group(1), line) for line in lines if (m := _ASSIGN.match(line))]
    if not any(name == "solid" for name, _ in assigned):
        bodies = [name for name, line in assigned if _BODY.search(line)]
        if bodies:
            lines.append(f"solid={bodies[-1]}")
            fixes.append(f"assigned solid={bodies[-1]}")
    text = "\n".join(lines) + "\n"
    return Repair(text, fixes, validate(text, grammar).ok)
