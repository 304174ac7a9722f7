"""The two strings of a program that torch evaluates as Python expressions: symbolic shapes,
which ``sympy.sympify`` evals, and the guard code, which ``ExportedProgram.module()`` execs.
Each is parsed and checked against an AST allow-list; the rules raise ``Refused``."""

import ast
import re
import typing

from service.backends.torch.archive.refusals import Refused, short
from service.backends.torch.archive.rules import quoted

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
        # torch.utils.sympy_expression.functions: the locals the deserializer passes to sympify
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


def sympy_expression(text: str) -> None:
    """Accept what ``sympy.sympify`` may ``eval``: numbers, ``Symbol('name', flag=True)``,
    ``Float('1.5')``, the named constants, arithmetic, comparisons and calls of
    ``_SYMPY_FUNCTIONS``. sympify drops line breaks before parsing: refuse them, and comments,
    so that what is checked is what sympy evaluates."""
    if "#" in text or not text.isprintable():
        raise Refused("is evaluated by sympy; it holds a comment or a control character")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Refused(f"is evaluated by sympy; it is not a Python expression ({exc})") from None
    try:
        _sympy_node(tree.body)
    except RecursionError:
        raise Refused("is evaluated by sympy; it nests too deep") from None


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
    raise Refused(f"is evaluated by sympy; it holds {short(ast.unparse(node))}, which {why}")


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


def guard_expression(text: str) -> None:
    """Accept a shape guard as torch's exporter writes it: ``L['seq'].size()[0] ==
    L['img'].size()[0]`` (two inputs sharing the dynamic batch axis), bounds, arithmetic."""
    why = "is Python source that ExportedProgram.module() runs through exec on every call"
    if "#" in text or not text.isprintable():
        raise Refused(f"{why}; it holds a comment or a control character")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Refused(f"{why}; it is not a Python expression ({exc})") from None
    try:
        _guard_node(tree.body, why)
    except RecursionError:
        raise Refused(f"{why}; it nests too deep") from None


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
            raise Refused(
                f"{why}; it holds {short(ast.unparse(node))}, which is not arithmetic on the "
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
                quoted(key)  # the guard is also pasted between quotes, as its error message
            except Refused as exc:
                raise Refused(f"{why}; an input key {exc}") from None
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
