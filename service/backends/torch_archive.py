"""What a ``.pt2`` archive may hold before ``torch.export.load`` reads it.

``torch.export.load`` unpickles several records of the archive. The sample inputs (and legacy
weight and constant files) go through ``torch.load(weights_only=True)`` and, if torch's
weights-only unpickler refuses them, through ``torch.load(weights_only=False)``, which runs
whatever the pickle names. Weights and constants saved with ``use_pickle`` are loaded with
``weights_only=False`` outright, opaque constants with ``pickle.loads``, custom-class constants
with TorchScript's unpickler, and AOTInductor entries as shared libraries. A model file must
not be able to run code in the server, so a program is loaded in two steps:

1. ``check_archive``, before torch reads anything and without unpickling: every record torch
   would unpickle must be a ``torch.save`` file whose pickle uses only the opcodes and
   globals of torch's weights-only allow-list (``get_unsafe_globals_in_checkpoint``, torch's
   own static scan); records torch can only read with full pickle or native code are refused.
   Every program (``models/*``, JSON) must also hold nothing that torch would evaluate as
   code (``check_program``, below).
2. ``weights_only_loads`` around the load: ``torch.load`` is held to ``weights_only=True``,
   so a record that passed the scan still cannot reach the full unpickler.

The archive is read with torch's own reader and payload-config parser, so the check sees the
records torch will load; where the two could differ, it checks more (every ``.pt`` record and
every payload config, not only those of the programs torch loads).

Where torch 2.13 turns strings of a program into code (``torch/_export/serde/serialize.py``,
``torch/fx``, ``torch/export/_unlift.py``, ``torch/utils/_pytree.py``), each covered by a rule
of ``check_program`` on the schema field the string sits in:

- ``SymExpr.expr_str`` (symbolic sizes, strides, offsets and ``sym_*_values`` of every graph,
  subgraphs included) goes to ``sympy.sympify``, i.e. ``eval``, at load
  (``GraphModuleDeserializer._parse_sym_expr``). Rule ``sympy``: an AST allow-list.
- ``ExportedProgram.guards_code`` is ``exec``'d into the guard function by
  ``ExportedProgram.module()`` (``_unlift._convert_guards_code_to_fn``) and runs on every call.
  Rule ``guards``: an AST allow-list of what torch's shape-guard printer writes, arithmetic
  and comparisons on the inputs' sizes (a program whose inputs share the dynamic batch axis
  carries ``L['a'].size()[0] == L['b'].size()[0]``).
- Node and value names become identifiers in the Python source FX generates and ``exec``s for
  every graph module (``fx.graph.CodeGen``; at load, again in ``.module()``): placeholders
  and tensor/sym/custom-object/token value names are pasted in verbatim (the deserializer
  overwrites FX's sanitized names), so are keyword names of higher-order calls, subgraph
  names (``get_attr`` targets) and ``forward_arg_names`` (``def forward(...)``). Rule ``name``:
  an identifier (or empty).
- Parameter, buffer and constant FQNs of the signature become ``get_attr`` targets in the
  module ``.module()`` builds, pasted by ``fx.graph._format_target`` into ``getattr(x, "...")``.
  Rule ``fqn``: dot-separated identifiers or numbers.
- ``ModuleCallSignature.in_spec``/``out_spec`` are pytree specs read by ``treespec_loads`` at
  load: a ``collections.defaultdict`` node imports the module its context names, an
  ``{"__enum__": ...}`` object in a context imports another and indexes into it; the keys of
  the keyword-argument dict are pasted between quotes into the generated ``forward``. Rule
  ``treespec``: plain container types only, no ``__enum__``, no quote in a context string.
- A string constant given as a graph input is pasted between quotes into the guard function
  (``_unlift._get_input_guards_for_graph``). Rule ``quoted``: no quote, backslash or control
  character in any ``as_string``/``as_strings`` constant.
- ``Node.target`` and ``as_operator`` arguments are resolved by ``getattr`` down from
  ``torch``, ``operator`` or ``math``: ``torch.os.system`` resolves. torch's verifier refuses
  such a node target at load, not such an argument: a program passing ``os.system`` to a
  higher-order operator loads (``.module()`` then fails to generate source naming it, an
  ``fx.Interpreter`` would call it). Rule ``operator``:
  ``torch.ops.<namespace>.<op>[.<overload>]`` or one of the symbolic-shape operators torch
  serializes.
- Numbers must be JSON numbers where the schema says so: torch's JSON reader does not check,
  and a string in, say, a range bound would reach sympy (today through ``int()``).

Every other string field is data that torch stores, splits or looks up (devices, metadata,
verifier and opset names, the ``custom`` and ``from_node`` JSON, which are ``json.loads``'d,
``source_fn_stack`` targets, resolved like operators but only stored);
a string field the rules do not know (a newer schema) is refused until classified. Not on the
load path of ``torch.export.load``: ``sympify`` in ``_export/serde/dynamic_shapes.py`` and
``export/dynamic_shapes.py`` (dynamic-shapes specs and error messages), the package importer
of ``fx.graph_module`` (pickled graph modules). An archive with a root-level entry would also
let ``torch.export.load`` fall back to its 2.7 zip format (``version``,
``serialized_exported_program.json``, read with ``zipfile``): every entry must sit in the
archive's folder.
"""

import ast
import dataclasses
import enum
import io
import json
import os
import re
import types
import typing
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch._export.serde import schema
from torch._export.serde.serialize import _SYM_OPS
from torch._export.serde.union import _Union
from torch.export.pt2_archive import PT2ArchiveReader
from torch.export.pt2_archive._package import _load_payload_config
from torch.export.pt2_archive.constants import (
    AOTINDUCTOR_DIR,
    CONSTANTS_CONFIG_FILENAME_FORMAT,
    CONSTANTS_DIR,
    MODELS_DIR,
    TENSOR_CONSTANT_FILENAME_PREFIX,
    WEIGHTS_CONFIG_FILENAME_FORMAT,
    WEIGHTS_DIR,
)


class UnsafeArchive(ValueError):
    """Loading the archive would need more than weights-only unpickling, or would evaluate
    part of it as code."""


def check_archive(data: bytes) -> None:
    """Raise ``UnsafeArchive`` naming the record when loading ``data`` (a ``.pt2`` file's
    bytes) could unpickle beyond the weights-only allow-list, load native code or evaluate a
    string of a program as code (``check_program``); other exceptions when ``data`` is not a
    ``.pt2`` archive at all. Unpickles and evaluates nothing."""
    _check_layout(data)
    archive = PT2ArchiveReader(io.BytesIO(data))
    names = archive.get_file_names()
    if any(name.startswith(AOTINDUCTOR_DIR) for name in names):
        raise UnsafeArchive(
            f"{AOTINDUCTOR_DIR} holds AOTInductor code, a shared library torch would load"
        )
    for record in _pickled_records(archive, names):
        _check_pickle(record, archive.read_bytes(record))
    for record in names:
        if record.startswith(MODELS_DIR):  # every one is deserialized, as torch selects them
            check_program(record, archive.read_bytes(record))


def _check_layout(data: bytes) -> None:
    """Every entry in one folder: ``torch.export.load`` reads a zip whose root holds
    ``version`` in its legacy format, with Python's ``zipfile``, past the checks below."""
    with zipfile.ZipFile(io.BytesIO(data)) as raw:
        entries = raw.namelist()
    root = entries[0].split("/", 1)[0] if entries else ""
    if stray := next((entry for entry in entries if not entry.startswith(f"{root}/")), None):
        raise UnsafeArchive(
            f"{stray} lies outside the archive's folder: torch.export.load would read the file "
            "in its legacy format"
        )


def _pickled_records(archive: PT2ArchiveReader, names: list[str]) -> Iterator[str]:
    """The records ``torch.export.load`` may unpickle; ``UnsafeArchive`` for those it would
    read with an unpickler that has no allow-list."""
    yield from (name for name in names if name.endswith(".pt"))  # sample inputs, legacy files
    for folder, config_format in (
        (WEIGHTS_DIR, WEIGHTS_CONFIG_FILENAME_FORMAT),
        (CONSTANTS_DIR, CONSTANTS_CONFIG_FILENAME_FORMAT),
    ):
        suffix = config_format.split("{}")[1]
        configs = [name for name in names if name.startswith(folder) and name.endswith(suffix)]
        for config in configs:
            for entry in _load_payload_config(archive, config).config.values():
                record = os.path.join(folder, entry.path_name)  # as torch joins them
                if folder == CONSTANTS_DIR and not entry.path_name.startswith(
                    TENSOR_CONSTANT_FILENAME_PREFIX
                ):
                    raise UnsafeArchive(
                        f"{record} is a custom or opaque object, which torch unpickles "
                        "without an allow-list"
                    )
                if entry.use_pickle:
                    yield record


def _check_pickle(record: str, data: bytes) -> None:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception as exc:  # not a torch.save zip, TorchScript, an unknown opcode, truncated
        raise UnsafeArchive(
            f"{record} needs a full unpickle: it is not a weights-only torch.save file ({exc})"
        ) from exc
    if unsafe:
        raise UnsafeArchive(
            f"{record} needs a full unpickle: it names {', '.join(sorted(unsafe))}, outside "
            "torch's weights-only allow-list"
        )


class _Refused(Exception):
    """A string of a program that torch would evaluate; its message says why."""


def check_program(record: str, data: bytes) -> None:
    """Raise ``UnsafeArchive`` naming ``record``, the place in it and the reason when the
    program JSON ``data`` holds anything that torch would evaluate as code (see the module
    docstring), or does not follow torch's schema where that matters (a string where a number
    belongs). The JSON is walked along torch's own schema classes, so every field is checked
    wherever it nests (subgraphs of higher-order operators included)."""
    try:
        program = json.loads(data)
    except ValueError as exc:  # torch reads it with json.loads too, and would fail the same
        raise UnsafeArchive(f"{record} is not a JSON program ({exc})") from exc
    try:
        _walk(program, schema.ExportedProgram, "ExportedProgram", "program")
    except _Refused as exc:
        raise UnsafeArchive(f"{record}: {exc}") from exc


def _walk(value: object, hint: Any, field: str, where: str) -> None:
    """Check ``value`` against the schema type ``hint``; ``field`` is the schema field it
    belongs to (``Class.name``), ``where`` its place in the JSON, for the message."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # in torch's schema: Optional[X]
        if value is None and type(None) in typing.get_args(hint):
            return
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(options) != 1:
            raise _Refused(f"at {where}: {field} has a schema type bnserve does not know")
        _walk(value, options[0], field, where)
    elif origin is list:
        (item,) = typing.get_args(hint)
        for index, element in enumerate(_expect(value, list, where)):
            _walk(element, item, field, f"{where}[{index}]")
    elif origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        for key, element in _expect(value, dict, where).items():
            _walk(key, key_hint, field, f"{where} (key {_short(key)})")
            _walk(element, value_hint, field, f"{where}[{_short(key)}]")
    elif isinstance(hint, type) and issubclass(hint, _Union):
        members = _fields(hint)  # torch reads the dict's one key as the member that is set
        entries = _expect(value, dict, where)
        if len(entries) != 1 or next(iter(entries)) not in members:
            raise _Refused(f"at {where}: not a {hint.__name__} (one of {', '.join(members)})")
        ((name, element),) = entries.items()
        _walk(element, members[name], f"{hint.__name__}.{name}", f"{where}.{name}")
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        entries = _expect(value, dict, where)
        for name, member in _fields(hint).items():
            if name in entries:  # torch ignores other keys
                _walk(entries[name], member, f"{hint.__name__}.{name}", f"{where}.{name}")
    elif hint is str:
        rule = _STRING_RULES.get(field)
        if rule is None:
            raise _Refused(f"at {where}: {field} is a string field bnserve does not know")
        try:
            rule(_expect(value, str, where))
        except _Refused as exc:
            raise _Refused(f"at {where}: {field} {_short(value)} {exc}") from None
    elif hint is bool:
        _expect(value, bool, where)
    elif hint is int or (isinstance(hint, type) and issubclass(hint, enum.IntEnum)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Refused(f"at {where}: {_short(value)} is not an integer")
    elif hint is float:
        if value not in ("Infinity", "-Infinity", "NaN") and (  # torch's non-finite floats
            not isinstance(value, int | float) or isinstance(value, bool)
        ):
            raise _Refused(f"at {where}: {_short(value)} is not a number")
    else:
        raise _Refused(f"at {where}: {field} has a schema type bnserve does not know ({hint})")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:300]}..."


def _fields(cls: type) -> dict[str, Any]:
    """The fields of a schema dataclass and their types, as torch's JSON reader resolves them."""
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = typing.get_type_hints(cls, globalns=vars(schema))
        fields = _FIELDS[cls] = {field.name: hints[field.name] for field in dataclasses.fields(cls)}
    return fields


_FIELDS: dict[type, dict[str, Any]] = {}


_T = typing.TypeVar("_T")


def _expect(value: object, kind: type[_T], where: str) -> _T:
    if not isinstance(value, kind):
        raise _Refused(f"at {where}: expected a {kind.__name__}, found {type(value).__name__}")
    return value


def _name(text: str) -> None:
    if text and not text.isidentifier():
        raise _Refused(
            "is pasted as an identifier into the Python source torch generates and runs; "
            "it is not an identifier"
        )


def _fqn(text: str) -> None:
    if text and not all(part.isidentifier() or part.isdecimal() for part in text.split(".")):
        raise _Refused(
            "is pasted into the Python source torch generates and runs "
            '(getattr(module, "...")); it is not a dotted path of identifiers and numbers'
        )


def _quoted(text: str) -> None:
    if any(char in text for char in "'\"\\") or not text.isprintable():
        raise _Refused(
            "may be pasted between quotes into the Python source torch generates and runs; "
            "it holds a quote, a backslash or a control character"
        )


_SYM_OP_NAMES = frozenset(f"{op.__module__}.{op.__name__}" for op in _SYM_OPS)
"""The symbolic-shape operators (``operator.add``, ``torch.sym_max``, ...) as torch's
serializer names them (``serialize_operator``)."""


def _operator(text: str) -> None:
    parts = text.split(".")
    if text in _SYM_OP_NAMES or (
        parts[:2] == ["torch", "ops"]
        and len(parts) in (4, 5)
        and all(part.isidentifier() and not part.startswith("__") for part in parts[2:])
    ):
        return
    raise _Refused(
        "is resolved by getattr into any object reachable from torch; only "
        "torch.ops.<namespace>.<op>[.<overload>] and torch's symbolic-shape operators may be"
    )


_TREESPEC_TYPES = frozenset(
    {
        "builtins.tuple",
        "builtins.list",
        "builtins.dict",
        "collections.OrderedDict",
        "collections.deque",
        "collections.namedtuple",  # context: the name of a registered type, looked up
        "torch.Size",
        "torch.fx.immutable_collections.immutable_dict",
        "torch.fx.immutable_collections.immutable_list",
    }
)
"""Pytree node types whose context torch reads as plain JSON (``collections.defaultdict``
is left out: its context names a module that ``treespec_loads`` imports)."""


def _treespec(text: str) -> None:
    try:
        protocol, node = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _Refused(f"is not a pytree spec ({exc})") from None
    if protocol != 1:
        raise _Refused(f"has pytree protocol {protocol!r}, not 1")
    _treespec_node(node)


def _treespec_node(node: object) -> None:
    if not isinstance(node, dict):
        raise _Refused("has a pytree node that is not an object")
    kind, context, children = node.get("type"), node.get("context"), node.get("children_spec")
    if kind is not None and kind not in _TREESPEC_TYPES:
        raise _Refused(
            f"has a pytree node of type {kind!r}, which torch resolves through imports or "
            "user-registered code; only plain containers are accepted"
        )
    if kind != "collections.namedtuple" and isinstance(context, str):
        try:
            loaded = json.loads(context)
        except (ValueError, RecursionError) as exc:
            raise _Refused(f"has a pytree context that is not JSON ({exc})") from None
        _treespec_context(loaded)
    for child in children if isinstance(children, list) else ():
        _treespec_node(child)


def _treespec_context(value: object) -> None:
    if isinstance(value, dict):
        if "__enum__" in value:
            raise _Refused(
                'has an {"__enum__": ...} object in a pytree context: torch imports the '
                "module it names"
            )
        for key, element in value.items():
            _quoted(key)
            _treespec_context(element)
    elif isinstance(value, list):
        for element in value:
            _treespec_context(element)
    elif isinstance(value, str):
        _quoted(value)  # dict keys: pasted between quotes into def forward(...)


_SYMPY_FUNCTIONS = frozenset(
    {
        # sympy, as srepr prints what torch builds (resolved from sympify's namespace)
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "Equality",
        "Unequality",
        "StrictLessThan",
        "LessThan",
        "StrictGreaterThan",
        "GreaterThan",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "Max",
        "Min",
        "Abs",
        "floor",
        "ceiling",
        # torch.utils._sympy.functions: the locals the deserializer passes to sympify
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
    }
)
"""The functions a symbolic expression may call: what torch's serializer emits
(``sympy.srepr`` of shape expressions) and its deserializer can resolve."""

_SYMPY_CONSTANTS = frozenset({"oo", "zoo", "nan", "true", "false", "int_oo", "pi", "E"})
_SYMBOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z")
_OPERATORS: tuple[type[ast.AST], ...] = (
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.BitAnd,
    ast.BitOr,
    ast.LShift,
    ast.RShift,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.Invert,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


def _sympy(text: str) -> None:
    """Accept what ``sympy.sympify`` may ``eval``: numbers, ``Symbol('name', flag=True)``,
    ``Float('1.5')``, the named constants, arithmetic, comparisons and calls of
    ``_SYMPY_FUNCTIONS``. sympify drops line breaks before parsing: refuse them, and comments,
    so that what is checked is what sympy evaluates."""
    if "#" in text or not text.isprintable():
        raise _Refused("is evaluated by sympy; it holds a comment or a control character")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _Refused(f"is evaluated by sympy; it is not a Python expression ({exc})") from None
    try:
        _sympy_node(tree.body)
    except RecursionError:
        raise _Refused("is evaluated by sympy; it nests too deep") from None


def _sympy_node(node: ast.AST) -> None:
    match node:
        case ast.Constant(value=bool() | int() | float()):
            pass
        case ast.Name(id=name):
            if name not in _SYMPY_CONSTANTS:
                _refuse(node, "is not one of sympy's named constants")
        case ast.UnaryOp(op=op, operand=operand) if isinstance(op, _OPERATORS):
            _sympy_node(operand)
        case ast.BinOp(left=left, op=op, right=right) if isinstance(op, _OPERATORS):
            _sympy_node(left)
            _sympy_node(right)
        case ast.BoolOp(op=op, values=values) if isinstance(op, _OPERATORS):
            for value in values:
                _sympy_node(value)
        case ast.Compare(left=left, ops=ops, comparators=comparators) if all(
            isinstance(op, _OPERATORS) for op in ops
        ):
            for operand in (left, *comparators):
                _sympy_node(operand)
        case ast.Call(func=ast.Name(id=function), args=args, keywords=keywords):
            if function not in _SYMPY_FUNCTIONS:
                _refuse(node, "calls a function that is not a symbolic-shape one")
            for index, arg in enumerate(args):
                match arg:
                    case ast.Constant(value=str(name)) if index == 0 and function == "Symbol":
                        if not _SYMBOL_NAME.match(name) or "__" in name:
                            _refuse(node, "names a symbol with an odd name")
                    case ast.Constant(value=str(number)) if index == 0 and function == "Float":
                        if not _FLOAT_TEXT.match(number):
                            _refuse(node, "gives Float a string that is not a number")
                    case _:
                        _sympy_node(arg)
            for keyword in keywords:
                if keyword.arg is None or keyword.arg.startswith("_"):
                    _refuse(node, "passes a keyword argument bnserve does not accept")
                if not isinstance(keyword.value, ast.Constant) or not isinstance(
                    keyword.value.value, bool | int
                ):
                    _refuse(node, "passes a keyword argument that is no integer or boolean")
        case _:
            _refuse(node, "is not arithmetic on numbers and symbols")


def _refuse(node: ast.AST, why: str) -> typing.NoReturn:
    raise _Refused(f"is evaluated by sympy; it holds {_short(ast.unparse(node))}, which {why}")


_GUARD_FUNCTIONS = frozenset({"abs", "max", "min", "round", "IsNonOverlappingAndDenseIndicator"})
_GUARD_MODULE_FUNCTIONS = {
    "math": frozenset(
        {"floor", "ceil", "trunc", "sqrt", "isnan", "log2", "exp", "log"}
        | {"cos", "cosh", "acos", "sin", "sinh", "asin", "tan", "tanh", "atan"}
    ),
    "torch": frozenset(
        {"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "_sym_sqrt"}
    ),
}
_GUARD_CONSTANTS = {"math": frozenset({"inf", "nan"})}
_TENSOR_SIZES = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
"""What torch's shape-guard printer (``ShapeGuardPythonPrinter``) writes: arithmetic and
comparisons on the inputs' sizes (``L['x'].size()[0]``), ``math``/``torch.sym_*`` functions
and the builtins it prints for ``Abs``, ``Max``, ``Min`` and rounding."""


def _guards(text: str) -> None:
    """Accept a shape guard as torch's exporter writes it: ``L['seq'].size()[0] ==
    L['img'].size()[0]`` (two inputs sharing the dynamic batch axis), bounds, arithmetic."""
    why = "is Python source that ExportedProgram.module() runs through exec on every call"
    if "#" in text or not text.isprintable():
        raise _Refused(f"{why}; it holds a comment or a control character")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _Refused(f"{why}; it is not a Python expression ({exc})") from None
    try:
        _guard_node(tree.body, why)
    except RecursionError:
        raise _Refused(f"{why}; it nests too deep") from None


def _guard_node(node: ast.AST, why: str) -> None:
    match node:
        case ast.Constant(value=bool() | int() | float()):
            pass
        case _ if _input_size(node, why):
            pass
        case ast.Attribute(value=ast.Name(id=module), attr=name) if name in _GUARD_CONSTANTS.get(
            module, ()
        ):
            pass
        case ast.UnaryOp(op=op, operand=operand) if isinstance(op, _OPERATORS):
            _guard_node(operand, why)
        case ast.BinOp(left=left, op=op, right=right) if isinstance(op, _OPERATORS):
            _guard_node(left, why)
            _guard_node(right, why)
        case ast.BoolOp(op=op, values=values) if isinstance(op, _OPERATORS):
            for value in values:
                _guard_node(value, why)
        case ast.Compare(left=left, ops=ops, comparators=comparators) if all(
            isinstance(op, _OPERATORS) for op in ops
        ):
            for operand in (left, *comparators):
                _guard_node(operand, why)
        case ast.IfExp(test=test, body=body, orelse=orelse):
            for operand in (test, body, orelse):
                _guard_node(operand, why)
        case ast.Call(func=function, args=args, keywords=[]) if (
            isinstance(function, ast.Name) and function.id in _GUARD_FUNCTIONS
        ) or (
            isinstance(function, ast.Attribute)
            and isinstance(function.value, ast.Name)
            and function.attr in _GUARD_MODULE_FUNCTIONS.get(function.value.id, ())
        ):
            for arg in args:
                _guard_node(arg, why)
        case _:
            raise _Refused(
                f"{why}; it holds {_short(ast.unparse(node))}, which is not arithmetic on the "
                "sizes of the inputs"
            )


def _input_size(node: ast.AST, why: str) -> bool:
    """Whether ``node`` is an input or a size of one: ``L['x']``, ``L['d']['k'][0]``,
    ``L['x'].size()[0]``, ``L['x'].stride()[1]``, ``L['x'].storage_offset()``."""
    match node:
        case ast.Name(id="L"):
            return True
        case ast.Subscript(value=value, slice=ast.Constant(value=str(key))):
            try:
                _quoted(key)  # the guard is also pasted between quotes, as its error message
            except _Refused as exc:
                raise _Refused(f"{why}; an input key {exc}") from None
            return _input_size(value, why)
        case ast.Subscript(value=value, slice=ast.Constant(value=int(index))) if not isinstance(
            index, bool
        ):
            return _input_size(value, why)
        case ast.Call(func=ast.Attribute(value=value, attr=method), args=[], keywords=[]) if (
            method in _TENSOR_SIZES
        ):
            return _input_size(value, why)
    return False


_STRING_RULES: dict[str, Callable[[str], None]] = {
    "SymExpr.expr_str": _sympy,
    "ExportedProgram.guards_code": _guards,
    **dict.fromkeys(
        (
            "TensorArgument.name",
            "TokenArgument.name",
            "CustomObjArgument.name",
            "GraphArgument.name",
            "NamedArgument.name",
            "Node.name",
            "SymIntArgument.as_name",
            "SymFloatArgument.as_name",
            "SymBoolArgument.as_name",
            "ModuleCallSignature.forward_arg_names",
            "Graph.tensor_values",  # keys: value names
            "Graph.sym_int_values",
            "Graph.sym_float_values",
            "Graph.sym_bool_values",
            "Graph.custom_obj_values",
            "ExportedProgram.range_constraints",  # keys: symbol names
        ),
        _name,
    ),
    **dict.fromkeys(
        (
            "InputToParameterSpec.parameter_name",
            "InputToBufferSpec.buffer_name",
            "InputToTensorConstantSpec.tensor_constant_name",
            "InputToCustomObjSpec.custom_obj_name",
            "InputToConstantInputSpec.name",
            "BufferMutationSpec.buffer_name",
            "ParameterMutationSpec.parameter_name",
            "GradientToParameterSpec.parameter_name",
            "GradientToUserInputSpec.user_input_name",
            "UserInputMutationSpec.user_input_name",
            "ModuleCallEntry.fqn",
        ),
        _fqn,
    ),
    "Node.target": _operator,
    "Argument.as_operator": _operator,
    "ModuleCallSignature.in_spec": _treespec,
    "ModuleCallSignature.out_spec": _treespec,
    "Argument.as_string": _quoted,
    "Argument.as_strings": _quoted,
    "ConstantValue.as_string": _quoted,
    # Data: stored, split, compared or looked up, never evaluated.
    **dict.fromkeys(
        (
            "Device.type",
            "CustomObjArgument.class_fqn",
            "Argument.as_string_to_argument",  # keys, printed with repr by FX
            "Node.metadata",  # stack_trace, nn_module_stack, torch_fn, source_fn_stack
            # (resolved with getattr, never called), custom and from_node (json.loads)
            "GraphModule.metadata",  # custom (json.loads)
            "GraphModule.treespec_namedtuple_fields",
            "NamedTupleDef.field_names",
            "ExportedProgram.opset_version",
            "ExportedProgram.verifiers",  # looked up in torch's table of verifiers
            "ExportedProgram.torch_version",
        ),
        lambda text: None,
    ),
}
"""What each string field of torch's program schema may hold (``Class.field``; for a dict
field, the rule holds for its string keys and string values)."""


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` runs with ``weights_only=True`` until exit, whatever its caller
    asks for.

    ``torch.load`` is a process-wide attribute: hold ``SERIALIZATION_LOCK`` so that two loads
    never patch it at once. Another thread's ``torch.load`` in the meantime is only made
    stricter; bnserve itself has none.
    """
    original = torch.load
    torch.load = _weights_only(original)
    try:
        yield
    finally:
        torch.load = original


def _weights_only(load: Callable[..., Any]) -> Callable[..., Any]:
    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        return load(*args, **{**kwargs, "weights_only": True})

    return weights_only_load
