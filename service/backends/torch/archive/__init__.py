"""What a ``.pt2`` archive may hold before ``torch.export.load`` reads it.

``torch.export.load`` unpickles several records of the archive. The sample inputs (and legacy
weight and constant files) go through ``torch.load(weights_only=True)`` and, if torch's
weights-only unpickler refuses them, through ``torch.load(weights_only=False)``, which runs
whatever the pickle names. Weights and constants saved with ``use_pickle`` are loaded with
``weights_only=False`` outright, opaque constants with ``pickle.loads``, custom-class constants
with TorchScript's unpickler, and AOTInductor entries as shared libraries. A model file must
not be able to run code in the server, so a program is loaded in two steps:

1. ``check_archive`` (``records``), before torch reads anything and without unpickling:
   every record torch would unpickle must be a ``torch.save`` file whose pickle uses only the
   opcodes and globals of torch's weights-only allow-list (``get_unsafe_globals_in_checkpoint``,
   torch's own static scan); records torch can only read with full pickle or native code are
   refused.
   Every program (``models/*``, JSON) must also hold nothing that torch would evaluate as
   code (``check_program``, ``programs``).
2. ``weights_only_loads`` around the load: ``torch.load`` is held to ``weights_only=True``,
   so a record that passed the scan still cannot reach the full unpickler.

The archive is read with torch's own reader and payload-config parser, so the check sees the
records torch will load; where the two could differ, it checks more (every ``.pt`` record and
every payload config, not only those of the programs torch loads).

Where torch 2.13 turns strings of a program into code (``torch/_export/serde/serialize.py``,
``torch/fx``, ``torch/export/_unlift.py``, ``torch/utils/_pytree.py``), each covered by a rule
of ``check_program`` on the schema field the string sits in (``rules``, ``expressions``):

- ``SymExpr.expr_str`` (symbolic sizes, strides, offsets and ``sym_*_values`` of every graph,
  subgraphs included) goes to ``sympy.sympify``, i.e. ``eval``, at load
  (``GraphModuleDeserializer._parse_sym_expr``). Rule ``sympy_expression``: an AST allow-list.
- ``ExportedProgram.guards_code`` is ``exec``'d into the guard function by
  ``ExportedProgram.module()`` (``_unlift._convert_guards_code_to_fn``) and runs on every call.
  Rule ``guard_expression``: an AST allow-list of what torch's shape-guard printer writes,
  arithmetic and comparisons on the inputs' sizes (a program whose inputs share the dynamic
  batch axis carries ``L['a'].size()[0] == L['b'].size()[0]``).
- Node and value names become identifiers in the Python source FX generates and ``exec``s for
  every graph module (``fx.graph.CodeGen``; at load, again in ``.module()``): placeholders
  and tensor/sym/custom-object/token value names are pasted in verbatim (the deserializer
  overwrites FX's sanitized names), so are keyword names of higher-order calls, subgraph
  names (``get_attr`` targets) and ``forward_arg_names`` (``def forward(...)``). Rule
  ``identifier``: an identifier (or empty).
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
  ``fx.Interpreter`` would call it). Rule ``operator_path``:
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

from service.backends.torch.archive.programs import check_program
from service.backends.torch.archive.records import check_archive, weights_only_loads
from service.backends.torch.archive.refusals import UnsafeArchive

__all__ = ["UnsafeArchive", "check_archive", "check_program", "weights_only_loads"]
