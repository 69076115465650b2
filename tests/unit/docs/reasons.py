"""The reasons the operator can emit, read from its source (nothing is imported or run).

A reason reaches the user through a *sink*:

- an argument bound to a parameter named ``reason`` of a function or class defined in
  ``gaudi_operator`` (``post_event``, ``set_condition``, ``clear_condition``, ``Event``,
  ``LastScale``, the plan's ``_finish``, the queueing decision's ``say``, …);
- the middle of a 3-tuple whose first item is ``"Normal"``/``"Warning"`` (an event as
  ``(type, reason, message)``) or ``True``/``False`` (a condition as ``(status, reason,
  message)``), the shapes failover and queueing hand to the plan.

Each sink's expression is resolved to string literals by following it back through the
code: literals, ``a if c else b``, ``a or b``, ``str(x)``, module constants (also imported
ones, ``failover.NO_FEASIBLE_NODE``), enum members (``Reason.COOLDOWN.value``), local
variables and tuple unpacking, subscripts of tuples, the return values of functions of the
package, parameters (through every call of the function, starred arguments included).

What cannot be resolved that way is reported as *unresolved*, with its place, so a test can
insist that each one is explained (see ``tests/unit/docs/test_troubleshooting.py``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "operator" / "gaudi_operator"

EVENT_TYPES = ("Normal", "Warning")


@dataclass(frozen=True)
class Site:
    """Where a reason is emitted: file (relative to the package) and line, and the
    expression as written."""

    file: str
    line: int
    expr: str


@dataclass
class Found:
    reasons: dict[str, set[Site]] = field(default_factory=dict)  # reason -> where
    unresolved: set[Site] = field(default_factory=set)


@dataclass
class Scope:
    module: str  # file relative to the package
    function: ast.FunctionDef | ast.AsyncFunctionDef | None
    outer: Scope | None = None


Func = ast.FunctionDef | ast.AsyncFunctionDef


def _params(fn: Func) -> list[str]:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return names[1:] if names and names[0] in ("self", "cls") else names


def _class_fields(cls: ast.ClassDef) -> list[str]:
    """Constructor parameters of a dataclass or pydantic model: annotated fields, in order."""
    return [
        s.target.id
        for s in cls.body
        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
    ]


def _is_str_enum(cls: ast.ClassDef) -> bool:
    return any(ast.unparse(b) in ("StrEnum", "enum.StrEnum") for b in cls.bases)


def _called_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


class Collector:
    def __init__(self, root: Path = PACKAGE) -> None:
        self.root = root
        self.trees: dict[str, ast.Module] = {}
        self.constants: dict[str, list[tuple[str, ast.expr]]] = {}  # NAME -> (module, value)
        self.enums: dict[str, dict[str, str]] = {}  # class -> member -> value
        # name -> (parameter list, the function a nested def is local to, else None)
        self.callables: dict[str, list[tuple[list[str], Func | None]]] = {}
        self.functions: dict[str, list[tuple[str, Func]]] = {}  # name -> (module, def)
        self.scopes: dict[int, Scope] = {}  # id(def) -> its scope
        self.calls: list[tuple[ast.Call, Scope]] = []
        self.tuples: list[tuple[ast.Tuple, Scope]] = []
        self._owned: dict[int, set[int]] = {}
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(), filename=str(path))
            self.trees[rel] = tree
            self._index(rel, tree)

    # --- indexing -------------------------------------------------------------------------

    def _index(self, module: str, tree: ast.Module) -> None:
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        self.constants.setdefault(target.id, []).append((module, stmt.value))
            elif (
                isinstance(stmt, ast.AnnAssign)
                and stmt.value is not None
                and isinstance(stmt.target, ast.Name)
            ):
                self.constants.setdefault(stmt.target.id, []).append((module, stmt.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                self.callables.setdefault(node.name, []).append((_class_fields(node), None))
                if _is_str_enum(node):
                    self.enums[node.name] = {
                        t.id: s.value.value
                        for s in node.body
                        if isinstance(s, ast.Assign)
                        and isinstance(s.value, ast.Constant)
                        and isinstance(s.value.value, str)
                        for t in s.targets
                        if isinstance(t, ast.Name)
                    }
        self._visit(tree, Scope(module, None))

    def _visit(self, node: ast.AST, scope: Scope) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = Scope(scope.module, child, scope)
                self.scopes[id(child)] = inner
                self.functions.setdefault(child.name, []).append((scope.module, child))
                self.callables.setdefault(child.name, []).append((_params(child), scope.function))
                self._visit(child, inner)
                continue
            if isinstance(child, ast.Call):
                self.calls.append((child, scope))
            elif isinstance(child, ast.Tuple):
                self.tuples.append((child, scope))
            self._visit(child, scope)

    # --- sinks ----------------------------------------------------------------------------

    def sinks(self) -> Iterator[tuple[ast.expr, Scope, int | None]]:
        """(expression, its scope, the tuple item it stands for) of every reason sink."""
        for call, scope in self.calls:
            name = _called_name(call)
            if name is None or name not in self.callables:
                continue
            for kw in call.keywords:
                if kw.arg == "reason":
                    yield kw.value, scope, None
            positions = {
                params.index("reason")
                for params, local_to in self.callables[name]
                if "reason" in params and self._visible(scope, local_to)
            }
            for pos in positions:
                yield from self._bound(call, pos, scope)
        for tup, scope in self.tuples:
            if len(tup.elts) != 3 or not isinstance(tup.elts[0], ast.Constant):
                continue
            first = tup.elts[0].value
            if first in EVENT_TYPES or isinstance(first, bool):
                yield tup.elts[1], scope, None

    @staticmethod
    def _visible(scope: Scope, local_to: Func | None) -> bool:
        """Can code in `scope` call a def that is local to `local_to` (None: global)?"""
        current: Scope | None = scope
        while local_to is not None and current is not None:
            if current.function is local_to:
                return True
            current = current.outer
        return local_to is None

    def _bound(
        self, call: ast.Call, pos: int, scope: Scope
    ) -> Iterator[tuple[ast.expr, Scope, int | None]]:
        """The argument of `call` at parameter position `pos` (through a starred one)."""
        for i, arg in enumerate(call.args):
            if isinstance(arg, ast.Starred):
                yield arg.value, scope, pos - i
                return
            if i == pos:
                yield arg, scope, None
                return

    # --- resolution -----------------------------------------------------------------------

    def collect(self) -> Found:
        found = Found()
        for expr, scope, index in self.sinks():
            values, misses = self.resolve(expr, scope, index, set())
            for value in values:
                site = Site(scope.module, expr.lineno, ast.unparse(expr))
                found.reasons.setdefault(value, set()).add(site)
            found.unresolved |= misses
        return found

    def resolve(
        self, expr: ast.expr, scope: Scope, index: int | None, seen: set[tuple[int, int | None]]
    ) -> tuple[set[str], set[Site]]:
        """The strings `expr` (its item `index`, for a tuple) can be, and the places where
        following it back stopped."""
        key = (id(expr), index)
        if key in seen:
            return set(), set()
        seen = seen | {key}
        values: set[str] = set()
        misses: set[Site] = set()

        def add(sub: ast.expr, sub_scope: Scope = scope, sub_index: int | None = index) -> None:
            v, m = self.resolve(sub, sub_scope, sub_index, seen)
            values.update(v)
            misses.update(m)

        if isinstance(expr, ast.Await):  # an awaited call is what the coroutine returns
            add(expr.value)
            return values, misses
        if isinstance(expr, ast.Constant):
            if isinstance(expr.value, str) and index is None:
                values.add(expr.value)
            return values, misses
        if isinstance(expr, ast.Tuple):
            if index is not None and index < len(expr.elts):
                add(expr.elts[index], sub_index=None)
            return values, misses
        if isinstance(expr, ast.List | ast.Set):  # iterated (a for loop): any of its items
            for elt in expr.elts:
                add(elt)
            return values, misses
        if isinstance(expr, ast.Dict):  # looked up (`.get`): any of its values
            for v in expr.values:
                add(v)
            return values, misses
        if isinstance(expr, ast.BinOp) and not isinstance(expr.op, ast.Add | ast.Mod):
            return values, misses  # arithmetic (a timedelta in a union), never a string
        if isinstance(expr, ast.IfExp):
            add(expr.body)
            add(expr.orelse)
            return values, misses
        if isinstance(expr, ast.BoolOp):
            for v in expr.values:
                add(v)
            return values, misses
        if isinstance(expr, ast.Subscript) and index is None:
            sl = expr.slice
            if isinstance(sl, ast.Constant) and isinstance(sl.value, int):
                add(expr.value, sub_index=sl.value)
                return values, misses
        if isinstance(expr, ast.Call):
            name = _called_name(expr)
            if name == "str" and len(expr.args) == 1:
                add(expr.args[0])
                return values, misses
            func = expr.func
            # MAPPING.get(key, default) of a module constant: a value or the default.
            if (
                name == "get"
                and isinstance(func, ast.Attribute)
                and len(expr.args) == 2
                and isinstance(func.value, ast.Name)
                and func.value.id in self.constants
            ):
                add(func.value)
                add(expr.args[1])
                return values, misses
            if name in self.functions and not (
                isinstance(expr.func, ast.Attribute) and expr.func.attr == "get"
            ):
                for _module, fn in self.functions[name]:
                    inner = self.scopes[id(fn)]
                    for node in ast.walk(fn):
                        if (
                            isinstance(node, ast.Return)
                            and node.value is not None
                            and self._owner(node, fn)
                        ):
                            add(node.value, inner)
                return values, misses
        if isinstance(expr, ast.Attribute):
            if expr.attr == "value":  # Enum.MEMBER.value, or a variable holding a member
                inner_values, inner_misses = self.resolve(expr.value, scope, index, seen)
                if inner_values:
                    return inner_values, inner_misses
            base = expr.value
            if isinstance(base, ast.Name) and base.id in self.enums:
                member = self.enums[base.id].get(expr.attr)
                if member is not None and index is None:
                    return {member}, set()
            if expr.attr in self.constants:
                for module, value in self.constants[expr.attr]:
                    add(value, Scope(module, None))
                return values, misses
        if isinstance(expr, ast.Name):
            resolved = self._resolve_name(expr, scope, index, seen)
            if resolved is not None:
                return resolved
        misses.add(Site(scope.module, getattr(expr, "lineno", 0), ast.unparse(expr)))
        return values, misses

    def _owner(self, node: ast.AST, fn: Func) -> bool:
        """Is `node` in `fn` itself, not in a function nested in it?"""
        owned = self._owned.get(id(fn))
        if owned is None:
            nested = {
                id(n)
                for inner in ast.walk(fn)
                if inner is not fn and isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef)
                for n in ast.walk(inner)
            }
            owned = {id(n) for n in ast.walk(fn)} - nested
            self._owned[id(fn)] = owned
        return id(node) in owned

    def _resolve_name(
        self, name: ast.Name, scope: Scope, index: int | None, seen: set[tuple[int, int | None]]
    ) -> tuple[set[str], set[Site]] | None:
        values: set[str] = set()
        misses: set[Site] = set()
        current: Scope | None = scope
        while current is not None and current.function is not None:
            fn = current.function
            hits = list(self._assignments(fn, name.id))
            if hits:
                for value, item in hits:
                    sub = index if item is None else item
                    if item is not None and index is not None:
                        continue  # a tuple item of a tuple item: not our shape
                    v, m = self.resolve(value, current, sub, seen)
                    values |= v
                    misses |= m
                return values, misses
            params = _params(fn)
            all_params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            if name.id in all_params:
                pos = params.index(name.id) if name.id in params else None
                if pos is None:
                    return None
                local_to = current.outer.function if current.outer else None
                for call, call_scope in self.calls:
                    if _called_name(call) != fn.name or not self._visible(call_scope, local_to):
                        continue
                    for kw in call.keywords:
                        if kw.arg == name.id:
                            v, m = self.resolve(kw.value, call_scope, index, seen)
                            values |= v
                            misses |= m
                    for arg, arg_scope, item in self._bound(call, pos, call_scope):
                        sub = item if item is not None else index
                        v, m = self.resolve(arg, arg_scope, sub, seen)
                        values |= v
                        misses |= m
                return values, misses
            current = current.outer
        if name.id in self.enums:
            return None
        if name.id in self.constants:
            for module, value in self.constants[name.id]:
                v, m = self.resolve(value, Scope(module, None), index, seen)
                values |= v
                misses |= m
            return values, misses
        return None

    def _assignments(self, fn: Func, name: str) -> Iterator[tuple[ast.expr, int | None]]:
        """What `name` is assigned in `fn` (not in nested functions): (value, tuple item)."""
        for node in ast.walk(fn):
            if not self._owner(node, fn):
                continue
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == name:
                        yield node.value, None
                    elif isinstance(target, ast.Tuple):
                        for i, elt in enumerate(target.elts):
                            if isinstance(elt, ast.Name) and elt.id == name:
                                yield node.value, i
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                if isinstance(node.target, ast.Name) and node.target.id == name:
                    yield node.value, None
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Tuple):
                for i, elt in enumerate(node.target.elts):
                    if isinstance(elt, ast.Name) and elt.id == name:
                        yield node.iter, i  # unresolved unless the iterable is a literal
            elif isinstance(node, ast.NamedExpr) and node.target.id == name:
                yield node.value, None
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                if node.target.id == name:
                    yield node.value, None  # list += [...]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == name
                and node.func.attr in ("append", "extend")
                and len(node.args) == 1
            ):
                arg = node.args[0]
                yield (ast.List(elts=[arg]) if node.func.attr == "append" else arg), None


def collect(root: Path = PACKAGE) -> Found:
    return Collector(root).collect()
