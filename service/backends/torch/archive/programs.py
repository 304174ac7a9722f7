"""The program JSON of a ``.pt2`` archive, walked along torch's own schema classes, each
string field checked by the rule for what torch does with it (see the package docstring)."""

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable
from typing import Any

from torch._export.serde import schema
from torch._export.serde.union import _Union

from service.backends.torch.archive.expressions import guard_expression, sympy_expression
from service.backends.torch.archive.refusals import Refused, UnsafeArchive, short
from service.backends.torch.archive.rules import fqn, identifier, operator_path, quoted, treespec


def check_program(record: str, data: bytes) -> None:
    """Raise ``UnsafeArchive`` naming ``record``, the place in it and the reason when the
    program JSON ``data`` holds anything that torch would evaluate as code (see the package
    docstring), or does not follow torch's schema where that matters (a string where a number
    belongs). The JSON is walked along torch's own schema classes, so every field is checked
    wherever it nests (subgraphs of higher-order operators included)."""
    try:
        program = json.loads(data)
    except ValueError as exc:  # torch reads it with json.loads too, and would fail the same
        raise UnsafeArchive(f"{record} is not a JSON program ({exc})") from exc
    try:
        _walk(program, schema.ExportedProgram, "ExportedProgram", "program")
    except Refused as exc:
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
            raise Refused(f"at {where}: {field} has a schema type bnserve does not know")
        _walk(value, options[0], field, where)
    elif origin is list:
        (item,) = typing.get_args(hint)
        for index, element in enumerate(_expect(value, list, where)):
            _walk(element, item, field, f"{where}[{index}]")
    elif origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        for key, element in _expect(value, dict, where).items():
            _walk(key, key_hint, field, f"{where} (key {short(key)})")
            _walk(element, value_hint, field, f"{where}[{short(key)}]")
    elif isinstance(hint, type) and issubclass(hint, _Union):
        members = _fields(hint)  # torch reads the dict's one key as the member that is set
        entries = _expect(value, dict, where)
        if len(entries) != 1 or next(iter(entries)) not in members:
            raise Refused(f"at {where}: not a {hint.__name__} (one of {', '.join(members)})")
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
            raise Refused(f"at {where}: {field} is a string field bnserve does not know")
        try:
            rule(_expect(value, str, where))
        except Refused as exc:
            raise Refused(f"at {where}: {field} {short(value)} {exc}") from None
    elif hint is bool:
        _expect(value, bool, where)
    elif hint is int or (isinstance(hint, type) and issubclass(hint, enum.IntEnum)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise Refused(f"at {where}: {short(value)} is not an integer")
    elif hint is float:
        if value not in ("Infinity", "-Infinity", "NaN") and (  # torch's non-finite floats
            not isinstance(value, int | float) or isinstance(value, bool)
        ):
            raise Refused(f"at {where}: {short(value)} is not a number")
    else:
        raise Refused(f"at {where}: {field} has a schema type bnserve does not know ({hint})")


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
        raise Refused(f"at {where}: expected a {kind.__name__}, found {type(value).__name__}")
    return value


_STRING_RULES: dict[str, Callable[[str], None]] = {
    "SymExpr.expr_str": sympy_expression,
    "ExportedProgram.guards_code": guard_expression,
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
        identifier,
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
        fqn,
    ),
    "Node.target": operator_path,
    "Argument.as_operator": operator_path,
    "ModuleCallSignature.in_spec": treespec,
    "ModuleCallSignature.out_spec": treespec,
    "Argument.as_string": quoted,
    "Argument.as_strings": quoted,
    "ConstantValue.as_string": quoted,
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
