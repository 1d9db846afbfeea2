"""SQL on FHIR v2 ViewDefinitions: FHIR resources -> flat rows, for tables BI tools can read.

Our code implements only the ViewDefinition structure (select, column, forEach, forEachOrNull,
repeat, unionAll, where, constant, %rowIndex, getResourceKey()/getReferenceKey()); every FHIRPath
expression is parsed and evaluated by fhirpathpy, against its FHIR R4 model.

    view = compile_view(definition)        # validates and compiles every expression, once
    rows = view.run(resources)             # or run_view(definition, resources)

Rows follow the specification's processing model (the `processing_model.md` page of
github.com/FHIR/sql-on-fhir-v2): for each focus of a selection, its columns, nested selects and
the concatenated unionAll branches are cross-joined. Cell values are what fhirpathpy returns:
str, bool, int, `Decimal` for decimals (fhirpathpy reads JSON floats as Decimal, which keeps
the value exact for a NUMERIC column), a list for `collection: true` columns, and date/time
results computed by FHIRPath (e.g. `birthDate + 1 day`) as their FHIR string.

Everything wrong with a definition raises `ViewError` at compile time, naming the element
(`select[1].forEach`, `column 'family'`); what only the data reveals (a column without
`collection: true` finding several values, a `where` that is not boolean) raises it while running,
naming the resource as well.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, cast

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import FP_Type
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from mapping.errors import ViewError
from mapping.fhir.references import RESOURCE_TYPE, parse_reference

__all__ = ["Column", "CompiledView", "ViewError", "compile_view", "run_view", "view_columns"]

# The service speaks FHIR R4; the model tells fhirpathpy the choice types (value[x]) and the
# types ofType()/is need.
_MODEL: dict[str, Any] = models["r4"]

# The specification's column and constant names: they become SQL identifiers.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# %-variables every expression may use besides the view's constants.
_BUILTIN_VARS = frozenset({"context", "resource", "rootResource", "rowIndex", "ucum"})

# repeat follows its paths until they return nothing. FHIR resources nest far less deeply; a
# path that returns its own input (e.g. "$this") would never stop.
_MAX_REPEAT_DEPTH = 100

_Compiled = Callable[[Any, Mapping[str, Any]], list[Any]]
_Iterate = Literal["forEach", "forEachOrNull", "repeat"]


@dataclass(frozen=True)
class Column:
    """A column of the view's table, in the specification's order."""

    name: str
    type: str | None  # the FHIR type the definition declares ("string", "dateTime"), if any
    collection: bool = False  # True: the cell holds a list (an ARRAY column)


# --- FHIRPath: fhirpathpy parses and evaluates; we only check before we run --------------------


class _RaiseOnSyntaxError(ErrorListener):  # type: ignore[misc]
    # fhirpathpy's own parse() reports no syntax errors: "name..family" or "foo(" compile to
    # something that fails (or not) later. The grammar's entireExpression rule, with this
    # listener, refuses them up front.
    def syntaxError(
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise SyntaxError(f"{msg} at character {column + 1}")


def _check_syntax(expression: str) -> None:
    listener = _RaiseOnSyntaxError()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.entireExpression()  # type: ignore[no-untyped-call]


def _walk(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("children") or ():
        if isinstance(child, Mapping):
            yield from _walk(child)


def _identifier(node: Mapping[str, Any]) -> str:
    # An Identifier node's text, without the backticks of a delimited identifier.
    ident = next((n for n in _walk(node) if n.get("type") == "Identifier"), node)
    return str(ident.get("text", "")).strip("`")


def _uses_this_at_top(node: Mapping[str, Any]) -> bool:
    # fhirpathpy binds $this only inside function arguments (where(...), select(...)); at the
    # top of an expression, as in a column path "$this", it fails with KeyError('$this').
    if node.get("type") == "ThisInvocation":
        return True
    return any(
        _uses_this_at_top(child)
        for child in node.get("children") or ()
        if isinstance(child, Mapping) and child.get("type") != "ParamList"
    )


def _get_resource_key(inputs: list[Any]) -> list[str]:
    # A resource's key is "Type/id", so keys of different resource types never collide.
    return [
        f"{r['resourceType']}/{r['id']}"
        for r in inputs
        if isinstance(r, Mapping) and "resourceType" in r and "id" in r
    ]


def _get_reference_key(inputs: list[Any], type_: Any = None) -> list[str]:
    # The key of the resource a Reference points to, equal to that resource's getResourceKey();
    # getReferenceKey(Patient) keeps only references to Patients.
    wanted = getattr(type_, "name", None)
    keys = []
    for value in inputs:
        ref = parse_reference(value)
        if ref is not None and (wanted is None or ref.resource_type == wanted):
            keys.append(ref.relative)
    return keys


_FUNCTIONS: dict[str, Any] = {
    "getResourceKey": {"fn": _get_resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _get_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
}
_KNOWN_FUNCTIONS = frozenset(invocation_registry) | frozenset(_FUNCTIONS)


@dataclass(frozen=True)
class _Path:
    """One compiled FHIRPath expression and where it sits in the definition (for messages)."""

    expression: str
    where: str
    fn: _Compiled

    def __call__(
        self, focus: Any, env: Mapping[str, Any], resource: Mapping[str, Any]
    ) -> list[Any]:
        try:
            return self.fn(focus, env)
        except ViewError:
            raise
        except Exception as exc:  # fhirpathpy raises bare Exceptions; say where it happened
            raise ViewError(
                f"{self.where}: FHIRPath {self.expression!r} failed on {_resource_name(resource)}:"
                f" {exc}"
            ) from exc


def _compile(expression: Any, where: str, names: frozenset[str], *, raw: bool = False) -> _Path:
    if not isinstance(expression, str) or not expression.strip():
        raise ViewError(f"{where} must be a FHIRPath expression (a non-empty string)")
    try:
        _check_syntax(expression)
        # Any: fhirpathpy types compile() as a plain callable; we read its parsedPath.
        fn: Any = fhirpathpy.compile(
            expression,
            model=_MODEL,
            # raw: keep fhirpathpy's typed nodes, so that forEach/repeat foci still know they
            # are a Quantity or a HumanName when their columns' expressions run on them.
            options={"userInvocationTable": _FUNCTIONS, "returnRawData": raw},
        )
        if _uses_this_at_top(fn.parsedPath):
            # select() evaluates its argument with $this bound to the focus, which is what $this
            # means at the top. The newline ends a trailing // comment before the parenthesis.
            fn = fhirpathpy.compile(f"select({expression}\n)", model=_MODEL, options=fn.options)
    except Exception as exc:
        raise ViewError(f"{where}: invalid FHIRPath {expression!r}: {exc}") from exc
    # Undefined constants and functions fhirpathpy lacks would only fail on the first resource
    # that reaches them; refuse them here, for every resource alike.
    for node in _walk(fn.parsedPath):
        if node.get("type") == "ExternalConstantTerm":
            name = _identifier(node)
            if name not in names:
                raise ViewError(f"{where}: FHIRPath {expression!r} uses undefined constant %{name}")
        elif node.get("type") == "FunctionInvocation":
            name = _identifier(node)
            if name not in _KNOWN_FUNCTIONS:
                raise ViewError(
                    f"{where}: FHIRPath {expression!r} calls {name}(), which fhirpathpy "
                    f"{fhirpathpy.__version__} does not implement"
                )
    return _Path(expression, where, cast(_Compiled, fn))


# --- The definition, checked and compiled ------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    column: Column
    path: _Path


@dataclass(frozen=True)
class _Select:
    where: str  # e.g. "select[1].unionAll[0]"; "" for the view itself
    iterate: _Iterate | None
    foci: tuple[_Path, ...]  # the forEach/forEachOrNull path, or the repeat paths
    columns: tuple[_Column, ...]
    selects: tuple[_Select, ...]
    union: tuple[_Select, ...]


def _list(value: Any, where: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ViewError(f"{where} must be a list of objects")
    return value


_CONSTANT_TYPES: dict[str, Callable[[Any], Any]] = {
    # FHIRPath compares decimals as Decimal; fhirpathpy reads resources' floats the same way.
    "valueDecimal": lambda v: Decimal(str(v)),
}


def _constants(view: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, constant in enumerate(_list(view.get("constant"), "constant")):
        where = f"constant[{i}]"
        name = constant.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ViewError(f"{where}: name {name!r} must match {_NAME.pattern}")
        if name in out or name in _BUILTIN_VARS:
            raise ViewError(f"{where}: constant %{name} is defined twice or is reserved")
        values = [k for k in constant if k.startswith("value")]
        if len(values) != 1:
            raise ViewError(f"{where} ({name}) needs exactly one value[x], not {values or 'none'}")
        out[name] = _CONSTANT_TYPES.get(values[0], lambda v: v)(constant[values[0]])
    return out


def _at(where: str, element: str) -> str:
    return f"{where}.{element}" if where else element


def _compile_select(node: Mapping[str, Any], where: str, names: frozenset[str]) -> _Select:
    iterate = [k for k in ("forEach", "forEachOrNull", "repeat") if k in node]
    if len(iterate) > 1:
        raise ViewError(f"{where} has {' and '.join(iterate)}: at most one is allowed")
    kind = cast(_Iterate | None, iterate[0] if iterate else None)
    foci: tuple[_Path, ...] = ()
    if kind == "repeat":
        paths = node["repeat"]
        if not isinstance(paths, list) or not paths:
            raise ViewError(
                f"{_at(where, 'repeat')} must be a non-empty list of FHIRPath expressions"
            )
        foci = tuple(
            _compile(p, _at(where, f"repeat[{i}]"), names, raw=True) for i, p in enumerate(paths)
        )
    elif kind is not None:
        foci = (_compile(node[kind], _at(where, kind), names, raw=True),)

    columns = []
    for i, col in enumerate(_list(node.get("column"), _at(where, "column"))):
        name = col.get("name")
        at = _at(where, f"column[{i}]")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ViewError(f"{at}: name {name!r} must match {_NAME.pattern}")
        at = f"{at} ({name!r})"
        collection = col.get("collection", False)
        type_ = col.get("type")
        if not isinstance(collection, bool) or not isinstance(type_, str | None):
            raise ViewError(f"{at}: collection must be a boolean and type a string")
        path = _compile(col.get("path"), at, names)
        columns.append(_Column(Column(name, type_, collection), path))

    selects = tuple(
        _compile_select(s, _at(where, f"select[{i}]"), names)
        for i, s in enumerate(_list(node.get("select"), _at(where, "select")))
    )
    union = tuple(
        _compile_select(s, _at(where, f"unionAll[{i}]"), names)
        for i, s in enumerate(_list(node.get("unionAll"), _at(where, "unionAll")))
    )
    return _Select(where, kind, foci, tuple(columns), selects, union)


def _select_columns(select: _Select) -> list[Column]:
    # The specification's order: columns, then nested selects', then the unionAll branches'
    # (which must all name the same columns in the same order).
    out = [c.column for c in select.columns]
    for sub in select.selects:
        out += _select_columns(sub)
    if select.union:
        branches = [_select_columns(u) for u in select.union]
        first = [c.name for c in branches[0]]
        for u, branch in zip(select.union[1:], branches[1:], strict=True):
            if [c.name for c in branch] != first:
                raise ViewError(
                    f"{u.where} has columns {[c.name for c in branch]}, but "
                    f"{select.union[0].where} has {first}: unionAll branches must match in order"
                )
        out += branches[0]
    return out


# --- Running ------------------------------------------------------------------------------------


def _resource_name(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _cell(values: list[Any], column: _Column, resource: Mapping[str, Any]) -> Any:
    if column.column.collection:
        return [_plain(v) for v in values]
    if len(values) > 1:
        raise ViewError(
            f"{column.path.where}: {_resource_name(resource)} has {len(values)} values; a column "
            "without collection: true takes at most one (add first(), a where(), or collection)"
        )
    return _plain(values[0]) if values else None


def _plain(value: Any) -> Any:
    # Date, time and quantity results of FHIRPath arithmetic are fhirpathpy objects; a table
    # cell gets their FHIR string form.
    return str(value) if isinstance(value, FP_Type) else value


@dataclass(frozen=True)
class CompiledView:
    """A validated ViewDefinition with every expression compiled: run it over any number of
    resources without parsing again."""

    resource: str
    columns: tuple[Column, ...]
    constants: Mapping[str, Any]
    where: tuple[_Path, ...]
    select: _Select

    def rows(self, resource: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows of one resource (none when it is of another type or fails `where`)."""
        if resource.get("resourceType") != self.resource:
            return []
        env = {**self.constants, "resource": resource, "rootResource": resource, "rowIndex": 0}
        for path in self.where:
            result = path(resource, env, resource)
            if len(result) > 1 or not all(isinstance(r, bool) for r in result):
                raise ViewError(
                    f"{path.where}: {path.expression!r} must give a boolean on "
                    f"{_resource_name(resource)}, gave {result!r}"
                )
            if result != [True]:
                return []
        names = [c.name for c in self.columns]
        # Every row gets every column, in table order (forEachOrNull's empty case leaves some
        # unbound).
        return [{n: row.get(n) for n in names} for row in self._process(self.select, resource, env)]

    def run(self, resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [row for resource in resources for row in self.rows(resource)]

    def _process(self, select: _Select, node: Any, env: Mapping[str, Any]) -> list[dict[str, Any]]:
        resource = env["resource"]
        if select.iterate is None:
            foci: Sequence[Any] = [node]
        elif select.iterate == "repeat":
            foci = self._repeat(select, node, env)
        else:
            foci = select.foci[0](node, env, resource)
        indexed: Iterable[tuple[int, Any]] = enumerate(foci)
        if not foci and select.iterate == "forEachOrNull":
            # One row anyway: its expressions see an empty focus, so paths give null, and
            # %rowIndex is 0 (what the suite's "%rowIndex with forEachOrNull" expects).
            indexed = [(0, [])]
        rows: list[dict[str, Any]] = []
        for index, focus in indexed:
            # Outside forEach/forEachOrNull/repeat, %rowIndex stays that of the enclosing one.
            inner = env if select.iterate is None else {**env, "rowIndex": index}
            parts: list[list[dict[str, Any]]] = [
                [{c.column.name: _cell(c.path(focus, inner, resource), c, resource)}]
                for c in select.columns
            ]
            parts += [self._process(sub, focus, inner) for sub in select.selects]
            if select.union:
                parts.append([r for u in select.union for r in self._process(u, focus, inner)])
            for combination in itertools.product(*parts):
                row: dict[str, Any] = {}
                for part in combination:
                    row.update(part)
                rows.append(row)
        return rows

    def _repeat(self, select: _Select, node: Any, env: Mapping[str, Any]) -> list[Any]:
        # Depth first, each node before what its paths reach, in path order (the suite's order).
        resource = env["resource"]
        found: list[Any] = []
        stack = [(child, 1) for child in reversed(self._children(select, node, env, resource))]
        while stack:
            current, depth = stack.pop()
            found.append(current)
            if depth >= _MAX_REPEAT_DEPTH:
                raise ViewError(
                    f"{_at(select.where, 'repeat')} still finds nodes {depth} levels deep in "
                    f"{_resource_name(resource)}: does a path return its own input?"
                )
            children = self._children(select, current, env, resource)
            stack += [(child, depth + 1) for child in reversed(children)]
        return found

    @staticmethod
    def _children(
        select: _Select, node: Any, env: Mapping[str, Any], resource: Mapping[str, Any]
    ) -> list[Any]:
        return [child for path in select.foci for child in path(node, env, resource)]


def compile_view(view: Mapping[str, Any]) -> CompiledView:
    """Check `view` and compile each of its FHIRPath expressions once."""
    if not isinstance(view, Mapping):
        raise ViewError("a ViewDefinition must be a JSON object")
    resource = view.get("resource")
    if not isinstance(resource, str) or not RESOURCE_TYPE.fullmatch(resource):
        raise ViewError(f"resource must be a FHIR resource type (e.g. 'Patient'), not {resource!r}")
    constants = _constants(view)
    names = _BUILTIN_VARS | frozenset(constants)
    selects = _list(view.get("select"), "select")
    if not selects:
        raise ViewError("select must hold at least one selection")
    root = _compile_select({"select": selects}, "", names)
    where = tuple(
        _compile(w.get("path"), f"where[{i}].path", names)
        for i, w in enumerate(_list(view.get("where"), "where"))
    )
    columns = _select_columns(root)
    seen: set[str] = set()
    for col in columns:
        if col.name in seen:
            raise ViewError(f"column {col.name!r} is defined twice: column names must be unique")
        seen.add(col.name)
    return CompiledView(resource, tuple(columns), constants, where, root)


def run_view(
    view: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The rows `view` gives for `resources` (those of its resource type that pass `where`)."""
    return compile_view(view).run(resources)


def view_columns(view: Mapping[str, Any]) -> list[Column]:
    """The table's columns, in the specification's order (for CREATE TABLE)."""
    return list(compile_view(view).columns)
