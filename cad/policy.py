"""Static safety policy for untrusted CadQuery programs, checked on the AST before execution.

The policy is a whitelist: only the statements and expressions a CAD script needs, only
``import cadquery as cq`` and ``math``, no dunder or private names, no attribute assignment, no
file APIs of CadQuery, and a restricted set of builtins at run time (``SAFE_BUILTINS``). It is the
first of two layers; the second is the forked, resource-limited, unprivileged child in
``cad.sandbox``.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass

MAX_SOURCE_BYTES = 64 * 1024

ALLOWED_MODULES = {"cadquery", "math"}

# Statements and expressions a CAD script may use. Anything else (classes, try, with, global,
# yield, await, del, raise, assert, ...) is rejected.
ALLOWED_NODES: tuple[type, ...] = (
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom,
    ast.alias, ast.Name, ast.Load, ast.Store, ast.Constant, ast.Attribute, ast.Call, ast.keyword,
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Tuple, ast.List, ast.Dict,
    ast.Set, ast.Subscript, ast.Slice, ast.Starred, ast.For, ast.While, ast.If, ast.Break,
    ast.Continue, ast.Pass, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Lambda,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.comprehension, ast.JoinedStr,
    ast.FormattedValue, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)

FORBIDDEN_NAMES = {
    "exec", "eval", "compile", "open", "getattr", "setattr", "delattr", "hasattr", "globals",
    "locals", "vars", "dir", "input", "breakpoint", "help", "memoryview", "type", "object",
    "super", "classmethod", "staticmethod", "property", "exit", "quit", "copyright", "credits",
    "license", "id", "hash", "iter", "next", "callable", "issubclass", "format",
    "bytearray", "bytes", "frozenset", "chr", "ord", "ascii", "repr", "os", "sys", "subprocess",
    "socket", "importlib", "builtins", "ctypes", "threading", "multiprocessing", "signal", "shutil",
    "pathlib", "io", "pickle", "marshal", "resource", "gc", "inspect", "traceback", "OCP",
}

# Attributes that reach the interpreter's internals, frames or CadQuery's file and OCP layers.
FORBIDDEN_ATTRS = {
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "ag_frame", "ag_code",
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next", "co_code",
    "func_globals", "func_code", "mro", "format", "format_map", "exporters", "importers",
    "occ_impl", "cqgi", "vis", "show", "show_object", "wrapped", "save", "load", "dxf", "svg",
    "toSvg", "toCompound_", "fromBrep", "toBrep", "tessellate_", "locate_", "debug",
    "environ", "system", "popen", "modules", "toOCC", "tempfile", "Path", "logging", "warnings",
    "remove", "unlink", "rmdir", "kill", "fork", "spawn", "execv", "execve",
} | FORBIDDEN_NAMES
FORBIDDEN_ATTR_PREFIXES = ("export", "import", "write", "read", "dump", "save", "load", "to_", "_")
FORBIDDEN_KEYWORDS = {"fontPath", "path", "fname", "filename", "fileName"}
# CadQuery methods reachable by the policy that take a file path (a font file) as a parameter,
# with the number of arguments that may be passed positionally before it. A call passes at most
# that many and unpacks none (``*``); the attribute may only be called directly, never aliased.
# (tests/test_hardening_policy.py walks CadQuery's API to keep this table complete.)
PATH_METHODS = {"text": 6, "makeText": 4}

SAFE_BUILTINS = {
    name: getattr(__builtins__, name) if not isinstance(__builtins__, dict) else __builtins__[name]
    for name in (
        "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int",
        "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round",
        "set", "sorted", "str", "sum", "tuple", "zip", "True", "False", "None",
        "ValueError", "ZeroDivisionError", "ArithmeticError",
    )
}
SAFE_BUILTINS["math"] = math
SAFE_BUILTINS["print"] = lambda *args, **kwargs: None


class PolicyViolation(Exception):
    """Raised when a program fails the static policy; ``lineno`` points at the offending node."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message if lineno is None else f"line {lineno}: {message}")
        self.lineno = lineno


@dataclass(frozen=True)
class CheckResult:
    status: str  # "ok", "syntax_error" or "rejected"
    error: str = ""
    tree: ast.Module | None = None


def _direct_path_calls(tree: ast.AST) -> set[int]:
    """Check every call for argument unpacking and calls of ``PATH_METHODS`` for the number of
    positional arguments; returns the ids of the attributes those checked calls use."""
    direct: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        line = getattr(node, "lineno", None)
        if any(k.arg is None for k in node.keywords):
            raise PolicyViolation("keyword argument unpacking (**) is not allowed", line)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in PATH_METHODS:
            limit = PATH_METHODS[func.attr]
            if any(isinstance(a, ast.Starred) for a in node.args):
                raise PolicyViolation(f"'*' arguments to '{func.attr}' are not allowed", line)
            if len(node.args) > limit:
                raise PolicyViolation(f"'{func.attr}' takes a font file path after its first {limit} arguments; "
                                      f"pass at most {limit} positionally", line)
            direct.add(id(func))
    return direct


def _check_node(node: ast.AST, direct: set[int] = frozenset()) -> None:
    line = getattr(node, "lineno", None)
    if not isinstance(node, ALLOWED_NODES):
        raise PolicyViolation(f"'{type(node).__name__}' is not allowed", line)
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in ALLOWED_MODULES:
                raise PolicyViolation(f"import of '{alias.name}' is not allowed", line)
    elif isinstance(node, ast.ImportFrom):
        if node.module != "math" or node.level:
            raise PolicyViolation("only 'import cadquery as cq' and math imports are allowed", line)
        if any(a.name == "*" for a in node.names):
            raise PolicyViolation("star imports are not allowed", line)
    elif isinstance(node, ast.Name):
        if node.id.startswith("__") or node.id in FORBIDDEN_NAMES:
            raise PolicyViolation(f"name '{node.id}' is not allowed", line)
    elif isinstance(node, ast.Attribute):
        attr = node.attr
        if attr in FORBIDDEN_ATTRS or attr.lower().startswith(FORBIDDEN_ATTR_PREFIXES):
            raise PolicyViolation(f"attribute '{attr}' is not allowed", line)
        if attr in PATH_METHODS and id(node) not in direct:
            raise PolicyViolation(f"'{attr}' may only be called directly", line)
        if isinstance(node.ctx, ast.Store):
            raise PolicyViolation("assignment to attributes is not allowed", line)
    elif isinstance(node, ast.keyword):
        if node.arg in FORBIDDEN_KEYWORDS:
            raise PolicyViolation(f"keyword '{node.arg}' is not allowed", line)
    elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
        if isinstance(node, ast.FunctionDef) and (node.decorator_list or node.name.startswith("_")):
            raise PolicyViolation("decorators and private function names are not allowed", line)
    elif isinstance(node, ast.arg):
        if node.arg.startswith("__"):
            raise PolicyViolation(f"argument '{node.arg}' is not allowed", line)
    elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        raise PolicyViolation("bytes literals are not allowed", line)
    elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
        # Item assignment into lists/dicts the program built is fine; into modules it is not,
        # and modules cannot be subscripted, so nothing more to check.
        pass


def check_source(code: str) -> CheckResult:
    """Parse ``code`` and apply the policy. Never executes anything."""
    if not isinstance(code, str):
        return CheckResult("rejected", f"code must be a string, got {type(code).__name__}")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return CheckResult("rejected", f"source larger than {MAX_SOURCE_BYTES} bytes")
    if "\x00" in code:
        return CheckResult("rejected", "source contains NUL bytes")
    try:
        tree = ast.parse(code, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None)
        return CheckResult("syntax_error", f"line {line}: {exc.__class__.__name__}: {getattr(exc, 'msg', exc)}")
    try:
        direct = _direct_path_calls(tree)
        for node in ast.walk(tree):
            _check_node(node, direct)
    except PolicyViolation as exc:
        return CheckResult("rejected", str(exc))
    except RecursionError:
        return CheckResult("rejected", "program nests too deeply")
    return CheckResult("ok", "", tree)


def safe_import(name: str, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
    """The ``__import__`` given to untrusted code: only the whitelisted modules."""
    if level != 0 or name not in ALLOWED_MODULES:
        raise ImportError(f"import of '{name}' is not allowed")
    import importlib

    return importlib.import_module(name)
