"""A ``.pt2`` file cannot make the server unpickle beyond torch's weights-only allow-list,
nor make torch evaluate part of its program as code.

Each hostile archive is a bundled ``model.pt2`` with one entry that ``torch.export.load``
unpickles replaced, or added, by a pickle whose ``__reduce__`` creates a marker file: what a
crafted file would run instead. Unpatched torch runs it at load (sample inputs and legacy
artifacts through ``torch.load``'s fallback to ``weights_only=False``, pickled weights and
constants with ``weights_only=False`` outright, opaque objects with ``pickle.loads``).
bnserve must refuse every such file before unpickling anything, name it and say why, and
treat it as any model that fails to load: the server does not start, the load API answers 400
and the serving version stays.

Each hostile program is the bundled ``digits_torch`` program with one string of its JSON made
into code that creates a marker file: torch evaluates it at load (``sympify``, FX's generated
source, imports named by pytree specs) or on the first call (guard code, FX's generated
source). bnserve must refuse it the same way, before torch reads the program.
"""

import copy
import dataclasses
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import typing
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy
import torch
from torch._export.serde import schema
from torch._export.serde.serialize import _print_sympy
from torch.utils._sympy import functions as sympy_functions

from service.backends.torch import program as torch_program
from service.backends.torch.archive import UnsafeArchive, check_archive, check_program
from service.backends.torch.archive import programs as torch_archive
from service.backends.torch.program import load_program
from service.backends.torch.serving import TorchBackend
from service.config import load_model_config
from service.errors import ConfigError
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, make_client, start_server

DIGITS = BUNDLED_MODELS / "digits_torch" / "1" / "model.pt2"
DIGITS_CONFIG = BUNDLED_MODELS / "digits_torch" / "config.toml"
PROGRAM = "models/model.json"
BUNDLED_PROGRAMS = sorted(BUNDLED_MODELS.glob("*/*/model.pt2"))
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"

Records = dict[str, bytes]
"""An archive's records by their name under its root folder."""


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[Path], None], tuple[Path]]:
        return Path.touch, (self.marker,)


def saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def add_payload_entry(records: Records, config: str, name: str, record: bytes) -> None:
    """List ``name`` in a payload config as a pickled entry stored in ``record``."""
    folder = config.rsplit("/", 1)[0]
    payload_config = json.loads(records[config])
    payload_config["config"]["hostile"] = {
        "path_name": name,
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    records[config] = json.dumps(payload_config).encode()
    records[f"{folder}/{name}"] = record


# Where the payload goes -> (how to put it there, the record the error must name).
HOSTILE: dict[str, tuple[Callable[[Records, Payload], None], str]] = {
    "sample inputs": (
        lambda records, payload: records.update(
            {"data/sample_inputs/model.pt": saved(((payload,), {}))}
        ),
        "data/sample_inputs/model.pt",
    ),
    "legacy constants": (
        lambda records, payload: records.update({"data/constants/model.pt": saved({"c": payload})}),
        "data/constants/model.pt",
    ),
    "pickled weight": (
        lambda records, payload: add_payload_entry(
            records, WEIGHTS_CONFIG, "weight_hostile", saved(payload)
        ),
        "data/weights/weight_hostile",
    ),
    "pickled constant": (
        lambda records, payload: add_payload_entry(
            records, CONSTANTS_CONFIG, "tensor_hostile", saved(payload)
        ),
        "data/constants/tensor_hostile",
    ),
    "opaque constant": (
        lambda records, payload: add_payload_entry(
            records, CONSTANTS_CONFIG, "opaque_obj_hostile", pickle.dumps(payload)
        ),
        "opaque_obj_hostile",
    ),
}
# The entries that torch reads with ``torch.load`` (the rest go through ``pickle.loads``).
THROUGH_TORCH_LOAD = ["sample inputs", "legacy constants", "pickled weight", "pickled constant"]


def rewrite(source: Path, dest: Path, edit: Callable[[Records], None]) -> Path:
    """``source`` with its records edited, written as a zip as ``torch.export.save`` does."""
    with zipfile.ZipFile(source) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        records = {
            info.filename.removeprefix(f"{root}/"): archive.read(info)
            for info in archive.infolist()
        }
    edit(records)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(f"{root}/{name}", data)
    return dest


def hostile(where: str, dest: Path, marker: Path) -> Path:
    put, _ = HOSTILE[where]
    return rewrite(DIGITS, dest, lambda records: put(records, Payload(marker)))


def repository_with(tmp_path: Path, program: Path) -> Path:
    """A repository holding ``digits_torch`` alone, its version 1 replaced by ``program``."""
    root = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "digits_torch", root / "digits_torch")
    shutil.copyfile(program, root / "digits_torch" / "1" / "model.pt2")
    return root


@pytest.mark.parametrize("path", BUNDLED_PROGRAMS, ids=lambda path: path.parent.parent.name)
def test_the_bundled_programs_pass_the_check_and_load(path: Path) -> None:
    check_archive(path.read_bytes())
    assert load_program(path).graph_signature.user_inputs


def test_the_payload_runs_when_torch_is_left_to_itself(tmp_path: Path) -> None:
    """The threat is real: without bnserve's check, loading the file runs the payload."""
    marker = tmp_path / "pwned"
    path = hostile("sample inputs", tmp_path / "model.pt2", marker)
    with pytest.raises(TypeError):  # the payload ran; its result is no sample input
        torch.export.load(path)
    assert marker.exists()


@pytest.mark.parametrize("where", HOSTILE)
def test_a_hostile_pickle_is_refused_unread(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = hostile(where, tmp_path / "model.pt2", marker)
    with pytest.raises(ConfigError) as error:
        load_program(path)
    message = str(error.value)
    assert message.startswith(f"{path}: refused: ")
    assert HOSTILE[where][1] in message
    assert "unpickle" in message
    assert not marker.exists()


@pytest.mark.parametrize("where", THROUGH_TORCH_LOAD)
def test_the_load_itself_never_falls_back_to_a_full_unpickle(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second line of defence: with the static check switched off, ``torch.load`` is still
    held to the weights-only unpickler during the load, and restored after it."""
    monkeypatch.setattr(torch_program, "check_archive", lambda data: None)
    marker = tmp_path / "pwned"
    path = hostile(where, tmp_path / "model.pt2", marker)
    original = torch.load
    with pytest.raises(ConfigError, match="Weights only load failed"):
        load_program(path)
    assert not marker.exists()
    assert torch.load is original


def test_aotinductor_code_in_an_archive_is_refused(tmp_path: Path) -> None:
    path = rewrite(
        DIGITS,
        tmp_path / "model.pt2",
        lambda records: records.update({"data/aotinductor/model/model.so": b"\x7fELF"}),
    )
    with pytest.raises(ConfigError, match=r"refused: .*AOTInductor") as error:
        load_program(path)
    assert str(path) in str(error.value)


@pytest.mark.slow
def test_the_server_does_not_start_on_a_hostile_program(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    program = hostile("sample inputs", tmp_path / "hostile.pt2", marker)
    repo = repository_with(tmp_path, program)
    try:
        server = start_server(repo, tmp_path / "server.log")
    except RuntimeError as exc:
        failure = str(exc)
    else:
        server.stop()
        pytest.fail("the server started on a hostile program")
    refused = repo / "digits_torch" / "1" / "model.pt2"
    assert "server exited" in failure
    assert f"{refused}: refused: data/sample_inputs/model.pt" in failure
    assert not marker.exists()


def test_the_load_api_refuses_a_hostile_program_and_keeps_serving(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    program = hostile("pickled weight", tmp_path / "hostile.pt2", marker)
    repo = repository_with(tmp_path, DIGITS)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with make_client(repo) as client:
        shutil.copyfile(program, repo / "digits_torch" / "1" / "model.pt2")
        response = client.post("/v2/repository/models/digits_torch/load", headers=admin)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error.startswith(f"{repo / 'digits_torch' / '1' / 'model.pt2'}: refused: ")
        assert "data/weights/weight_hostile" in error
        assert client.get("/v2/models/digits_torch/ready").status_code == 200
    assert not marker.exists()


Program = dict[str, Any]
"""A program's JSON (``models/model.json``), as torch's schema lays it out."""


def code(marker: Path) -> str:
    """A Python expression that creates ``marker``."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def dotless_code(marker: Path) -> str:
    """``code(marker)`` without a dot (for a place torch splits at dots)."""
    path = f'getattr("","join")(map(chr,({",".join(str(ord(char)) for char in str(marker))},)))'
    return f'getattr(getattr(__import__("pathlib"),"Path")({path}),"touch")()'


def payload_module(marker: Path) -> str:
    """The name of a module, importable in the test, whose import creates ``marker``."""
    name = f"payload_{marker.parent.name}"
    (marker.parent / f"{name}.py").write_text(f"{code(marker)}\n")
    return name


def signature(program: Program) -> dict[str, Any]:
    """The signature of the program's root module (its pytree specs, its argument names)."""
    return typing.cast(dict[str, Any], program["graph_module"]["module_call_graph"][0]["signature"])


def edit_spec(program: Program, key: str, edit: Callable[[Any], None]) -> None:
    """Edit the pytree spec ``key`` (``in_spec``, ``out_spec``) of the program's signature."""
    spec = json.loads(signature(program)[key])
    edit(spec[1])
    signature(program)[key] = json.dumps(spec)


def symbolic_shape(program: Program, marker: Path) -> None:
    text = json.dumps(program).replace(
        "Symbol('s77', positive=True, integer=True)",
        f"Symbol('s77', positive=True, integer=({code(marker)} is None))",
    )
    program.clear()
    program.update(json.loads(text))


def guard_code(program: Program, marker: Path) -> None:
    program["guards_code"] = [f"{code(marker)} is None"]


def input_name(program: Program, marker: Path) -> None:
    """An extra input whose name declares a default: evaluated when FX defines forward."""
    graph, name = program["graph_module"]["graph"], f"y={code(marker)}"
    graph["inputs"].append({"as_tensor": {"name": name}})
    graph["tensor_values"][name] = copy.deepcopy(graph["tensor_values"]["x"])
    program["graph_module"]["signature"]["input_specs"].append(
        {"user_input": {"arg": {"as_tensor": {"name": name}}}}
    )


def parameter_path(program: Program, marker: Path, records: Records) -> None:
    """A parameter path pasted into ``getattr(self.conv1, "...")`` by ``.module()``."""
    path = f'conv1.y") if {dotless_code(marker)} else getattr(self,"z'
    for spec in program["graph_module"]["signature"]["input_specs"]:
        if spec.get("parameter", {}).get("parameter_name") == "conv1.weight":
            spec["parameter"]["parameter_name"] = path
    weights = json.loads(records[WEIGHTS_CONFIG])
    weights["config"][path] = weights["config"].pop("conv1.weight")
    records[WEIGHTS_CONFIG] = json.dumps(weights).encode()


def pytree_enum(program: Program, marker: Path) -> None:
    enum = {"__enum__": True, "fqn": f"{payload_module(marker)}:Kind", "name": "a"}
    edit_spec(
        program, "in_spec", lambda spec: spec["children_spec"][1].update(context=json.dumps([enum]))
    )


def pytree_defaultdict(program: Program, marker: Path) -> None:
    context = {
        "default_factory_module": payload_module(marker),
        "default_factory_name": "factory",
        "dict_context": [],
    }
    edit_spec(
        program,
        "out_spec",
        lambda spec: spec.update(type="collections.defaultdict", context=context),
    )


def operator_argument(program: Program, marker: Path) -> None:
    """``os.system`` as the function a higher-order operator calls."""
    program["graph_module"]["graph"]["nodes"].insert(
        0,
        {
            "target": "torch.ops.higher_order.wrap",
            "inputs": [
                {"name": "", "arg": {"as_operator": "torch.os.system"}, "kind": 1},
                {"name": "", "arg": {"as_string": f"touch {marker}"}, "kind": 1},
            ],
            "outputs": [{"as_none": True}],
            "metadata": {},
            "name": "wrap",
        },
    )


def string_input(program: Program, marker: Path) -> None:
    """A string input: torch pastes it between quotes into the guard function."""
    program["graph_module"]["graph"]["inputs"].append({"as_string": f"a' or {code(marker)} or 'b"})
    program["graph_module"]["signature"]["input_specs"].append(
        {"user_input": {"arg": {"as_string": "a"}}}
    )


def forward_argument(program: Program, marker: Path) -> None:
    signature(program)["forward_arg_names"] = [f"x={code(marker)}"]


@dataclasses.dataclass
class HostileProgram:
    edit: Callable[[Program, Path, Records], None]
    refused: str
    """The field the error must name."""
    runs: bool
    """Whether torch, left to itself, runs the payload when serving the program (at load or
    on the first call); the others are pasted into code that then fails to compile, or not
    reached with one tensor input, and are refused all the same."""


def program_edit(edit: Callable[[Program, Path], None]) -> Callable[[Program, Path, Records], None]:
    return lambda program, marker, records: edit(program, marker)


HOSTILE_PROGRAMS = {
    "symbolic shape": HostileProgram(program_edit(symbolic_shape), "SymExpr.expr_str", runs=True),
    "guard code": HostileProgram(
        program_edit(guard_code), "ExportedProgram.guards_code", runs=True
    ),
    "input name": HostileProgram(program_edit(input_name), "TensorArgument.name", runs=True),
    "parameter path": HostileProgram(
        parameter_path, "InputToParameterSpec.parameter_name", runs=True
    ),
    "pytree enum": HostileProgram(program_edit(pytree_enum), "in_spec", runs=True),
    "pytree defaultdict": HostileProgram(
        program_edit(pytree_defaultdict), "collections.defaultdict", runs=True
    ),
    "operator argument": HostileProgram(
        program_edit(operator_argument), "Argument.as_operator", runs=False
    ),
    "string input": HostileProgram(program_edit(string_input), "Argument.as_string", runs=False),
    "forward argument": HostileProgram(
        program_edit(forward_argument), "forward_arg_names", runs=False
    ),
}


def hostile_program(where: str, dest: Path, marker: Path) -> Path:
    def edit(records: Records) -> None:
        program = json.loads(records[PROGRAM])
        HOSTILE_PROGRAMS[where].edit(program, marker, records)
        records[PROGRAM] = json.dumps(program).encode()

    return rewrite(DIGITS, dest, edit)


def serve(path: Path) -> None:
    """What the server does with a program: load it as a backend, answer a request."""
    backend = TorchBackend(path, load_model_config(DIGITS_CONFIG))
    backend.predict({"input": np.zeros((2, 1, 8, 8), np.float32)})


@pytest.mark.parametrize("where", [where for where, case in HOSTILE_PROGRAMS.items() if case.runs])
def test_the_program_payload_runs_when_torch_is_left_to_itself(where: str, tmp_path: Path) -> None:
    """In a fresh interpreter: torch alone, no state left by other tests (in the suite's
    process the symbolic-shape payload once did not run, after an unrelated set of tests)."""
    marker = tmp_path / "pwned"
    path = hostile_program(where, tmp_path / "model.pt2", marker)
    script = (
        "import sys, torch\n"
        "try:\n"
        f"    torch.export.load({str(path)!r}).module()(torch.zeros(2, 1, 8, 8))\n"
        "except Exception as exc:\n"  # the payload has run by the time anything fails
        "    print(repr(exc))\n"
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert marker.exists(), done.stdout + done.stderr


@pytest.mark.parametrize("where", HOSTILE_PROGRAMS)
def test_a_hostile_program_is_refused_before_torch_reads_it(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "pwned"
    path = hostile_program(where, tmp_path / "model.pt2", marker)
    try:
        serve(path)  # the load refuses it: no module is built, no request answered
    except Exception as exc:
        error: Exception | None = exc
    else:
        error = None
    assert not marker.exists()
    assert isinstance(error, ConfigError)
    message = str(error)
    assert message.startswith(f"{path}: refused: {PROGRAM}: at program.")
    assert HOSTILE_PROGRAMS[where].refused in message


def test_the_refusal_says_what_torch_would_do_with_the_string(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError) as error:
        load_program(hostile_program("symbolic shape", tmp_path / "s.pt2", marker))
    assert "tensor_values['x'].sizes[0].as_expr.expr_str" in str(error.value)
    assert "evaluated by sympy" in str(error.value)
    assert "__import__" in str(error.value)
    with pytest.raises(ConfigError, match="runs through exec on every call"):
        load_program(hostile_program("guard code", tmp_path / "g.pt2", marker))
    assert not marker.exists()


def test_a_file_outside_the_archive_folder_is_refused(tmp_path: Path) -> None:
    """torch.export.load would read such an archive in its 2.7 format (a root-level
    ``version`` and ``serialized_exported_program.json``), with another zip reader."""
    path = tmp_path / "model.pt2"
    shutil.copyfile(DIGITS, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("version", "8.20")
    with pytest.raises(ConfigError, match=r"refused: version lies outside the archive's folder"):
        load_program(path)


def symbolic(expr_str: str) -> bytes:
    """A program fragment holding one symbolic value (the check reads only what is there)."""
    graph = {"sym_int_values": {"s": {"as_expr": {"expr_str": expr_str, "hint": None}}}}
    return json.dumps({"graph_module": {"graph": graph}}).encode()


s0 = sympy.Symbol("s0", positive=True, integer=True)
u0 = sympy.Symbol("u0", integer=True)
TORCH_EXPRESSIONS = [
    s0 + 1,
    2 * s0 - u0,
    s0**2,
    sympy.Rational(1, 2) * s0,
    sympy.Eq(s0, 2),
    sympy.Ne(s0, 2),
    sympy.And(s0 < 3, s0 >= 1),
    sympy.Or(s0 > 5, s0 <= 3),
    sympy.Max(s0, u0),
    sympy.Min(s0, 2),
    sympy.Abs(u0),
    sympy.oo,
    -sympy.oo,
    sympy.true,
    sympy.Integer(-3),
    sympy_functions.FloorDiv(s0, 2),
    sympy_functions.Mod(s0, 3),
    sympy_functions.PythonMod(s0, 3),
    sympy_functions.CeilToInt(s0 / 2),
    sympy_functions.FloatTrueDiv(sympy_functions.ToFloat(s0), 2.0),
    sympy_functions.IntTrueDiv(s0, 2),
    sympy_functions.Where(s0 > 2, s0, 1),
    sympy_functions.CleanDiv(s0, 2),
    sympy_functions.ModularIndexing(s0, 1, 4),
    sympy_functions.TruncToInt(sympy_functions.ToFloat(s0)),
    sympy_functions.RoundDecimal(sympy_functions.ToFloat(s0), 2),
    sympy_functions.IsNonOverlappingAndDenseIndicator(s0, 1, 1, 1),
]


@pytest.mark.parametrize("expr", TORCH_EXPRESSIONS, ids=str)
def test_symbolic_shapes_as_torch_writes_them_pass(expr: sympy.Basic) -> None:
    check_program(PROGRAM, symbolic(_print_sympy(expr)))


@pytest.mark.parametrize(
    "expr_str",
    [
        "__import__('os').system('true')",
        "Integer(1).__class__",
        "Symbol('s0', positive=True, integer=eval('1'))",
        "Symbol('__class__')",
        "Float('1e5; x')",
        "Integer(1) # comment",
        "Integer(1)\n",
        "[Integer(1) for x in ()]",
        "(lambda: 1)()",
        "Max(*[1, 2])",
        "Integer(x=Symbol('s0'))",
        "Integer(**{})",
        "open",
        "Integer('1')",
        "s0",
    ],
)
def test_anything_else_in_a_symbolic_shape_is_refused(expr_str: str) -> None:
    with pytest.raises(UnsafeArchive, match=r"expr_str .* is evaluated by sympy"):
        check_program(PROGRAM, symbolic(expr_str))


def guarded(guard: str) -> bytes:
    return json.dumps({"guards_code": [guard]}).encode()


@pytest.mark.parametrize(
    "guard",
    [  # as torch.export writes them: inputs sharing the batch axis, derived dims, nested inputs
        "L['seq'].size()[0] == L['img'].size()[0]",
        "((-1) + L['x'].size()[1]) != 1",
        "((-1) + L['x'].size()[1]) == L['y'].size()[1]",
        "L['d']['a'].size()[0] == L['d']['b'].size()[0]",
        "2 <= L['x'].size()[0] and L['x'].size()[0] <= 4096",
        "max(L['x'].size()[0], 3) == math.floor(L['y'].stride()[0] / 2)",
        "torch.sym_float(L['x'][0].size()[0]) < math.inf",
    ],
)
def test_shape_guards_as_torch_writes_them_pass(guard: str) -> None:
    check_program(PROGRAM, guarded(guard))


@pytest.mark.parametrize(
    "guard",
    [
        "__import__('os').system('true') is None",
        "L.__class__ is None",
        "L['x'].size.__self__ is None",
        "getattr(L, 'x') is None",
        "L['x'].numpy() is None",
        "torch.load('x') is None",
        "math.os is None",
        "L['a\"b'].size()[0] == 1",
        "L['x'].size()[0] == 1 # comment",
        "[x for x in L]",
        "(lambda: 1)()",
    ],
)
def test_any_other_guard_code_is_refused(guard: str) -> None:
    with pytest.raises(UnsafeArchive, match=r"guards_code .* runs through exec on every call"):
        check_program(PROGRAM, guarded(guard))


def test_a_program_with_inputs_sharing_the_batch_axis_loads(tmp_path: Path) -> None:
    """torch.export writes a guard for it; the guard passes the check and runs."""

    class Two(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a.sum(1) + b.sum(1)

    batch = torch.export.Dim("batch", max=64)
    program = torch.export.export(
        Two(), (torch.zeros(3, 4), torch.zeros(3, 2)), dynamic_shapes=({0: batch}, {0: batch})
    )
    assert program._guards_code  # what the check must accept
    path = tmp_path / "two.pt2"
    torch.export.save(program, path)
    module = load_program(path).module()
    assert module(torch.ones(5, 4), torch.ones(5, 2)).tolist() == [6.0] * 5
    with pytest.raises(AssertionError, match="Guard failed"):
        module(torch.ones(5, 4), torch.ones(4, 2))


def schema_string_fields(cls: type, seen: set[type]) -> set[str]:
    """Every ``Class.field`` of torch's program schema that holds strings (keys included)."""
    found: set[str] = set()

    def visit(hint: Any, field: str) -> None:
        if hint is str:
            found.add(field)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found.update(schema_string_fields(hint, seen))
        for arg in typing.get_args(hint):
            visit(arg, field)

    if cls not in seen:
        seen.add(cls)
        for name, hint in typing.get_type_hints(cls, globalns=vars(schema)).items():
            visit(hint, f"{cls.__name__}.{name}")
    return found


def test_every_string_field_of_torchs_schema_has_a_rule() -> None:
    """A field a newer torch adds is refused until someone says what torch does with it."""
    fields = schema_string_fields(schema.ExportedProgram, set())
    assert "SymExpr.expr_str" in fields
    assert fields == set(torch_archive._STRING_RULES)
