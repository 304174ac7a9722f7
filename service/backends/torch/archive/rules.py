"""Rules for the strings of a program that torch pastes into the Python source it generates
and runs, or resolves by import or ``getattr`` (see the package docstring). Each raises
``Refused`` saying why."""

import json

from torch._export.serde.serialize import _SYM_OPS

from service.backends.torch.archive.refusals import Refused


def identifier(text: str) -> None:
    if text and not text.isidentifier():
        raise Refused(
            "is pasted as an identifier into the Python source torch generates and runs; "
            "it is not an identifier"
        )


def fqn(text: str) -> None:
    if text and not all(part.isidentifier() or part.isdecimal() for part in text.split(".")):
        raise Refused(
            "is pasted into the Python source torch generates and runs "
            '(getattr(module, "...")); it is not a dotted path of identifiers and numbers'
        )


def quoted(text: str) -> None:
    if any(char in text for char in "'\"\\") or not text.isprintable():
        raise Refused(
            "may be pasted between quotes into the Python source torch generates and runs; "
            "it holds a quote, a backslash or a control character"
        )


_SYM_OP_NAMES = frozenset(f"{op.__module__}.{op.__name__}" for op in _SYM_OPS)
"""The symbolic-shape operators (``operator.add``, ``torch.sym_max``, ...) as torch's
serializer names them (``serialize_operator``)."""


def operator_path(text: str) -> None:
    parts = text.split(".")
    if text in _SYM_OP_NAMES or (
        parts[:2] == ["torch", "ops"]
        and len(parts) in (4, 5)
        and all(part.isidentifier() and not part.startswith("__") for part in parts[2:])
    ):
        return
    raise Refused(
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


def treespec(text: str) -> None:
    try:
        protocol, node = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise Refused(f"is not a pytree spec ({exc})") from None
    if protocol != 1:
        raise Refused(f"has pytree protocol {protocol!r}, not 1")
    _treespec_node(node)


def _treespec_node(node: object) -> None:
    if not isinstance(node, dict):
        raise Refused("has a pytree node that is not an object")
    kind, context, children = node.get("type"), node.get("context"), node.get("children_spec")
    if kind is not None and kind not in _TREESPEC_TYPES:
        raise Refused(
            f"has a pytree node of type {kind!r}, which torch resolves through imports or "
            "user-registered code; only plain containers are accepted"
        )
    if kind != "collections.namedtuple" and isinstance(context, str):
        try:
            loaded = json.loads(context)
        except (ValueError, RecursionError) as exc:
            raise Refused(f"has a pytree context that is not JSON ({exc})") from None
        _treespec_context(loaded)
    for child in children if isinstance(children, list) else ():
        _treespec_node(child)


def _treespec_context(value: object) -> None:
    if isinstance(value, dict):
        if "__enum__" in value:
            raise Refused(
                'has an {"__enum__": ...} object in a pytree context: torch imports the '
                "module it names"
            )
        for key, element in value.items():
            quoted(key)
            _treespec_context(element)
    elif isinstance(value, list):
        for element in value:
            _treespec_context(element)
    elif isinstance(value, str):
        quoted(value)  # dict keys: pasted between quotes into def forward(...)
