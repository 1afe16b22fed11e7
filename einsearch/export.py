"""Code generation: a trained candidate as one standalone Python file that needs only torch.

The file carries the source of exactly the einsearch modules the candidate's model uses (the
primitive families it was built from, the ops they call, the combinators, the builder and the
task's model shell), with einsearch's own imports removed, followed by the architecture as a
literal tree and a `Candidate` module whose constructor defaults are the search's d_model and
layer count.  An op that einsearch may run as a Triton kernel is carried as its PyTorch form (the
op module's `TORCH_FORMS`).  Random graphs (sparse wiring) are carried as edge lists, so networkx
is not needed either.

    import my_mixer, safetensors.torch
    model = my_mixer.Candidate()
    model.load_state_dict(safetensors.torch.load_file("my_mixer.safetensors"))

The file loads however it is imported, also by ``importlib.util.spec_from_file_location`` without
an entry in ``sys.modules``: it does not use ``from __future__ import annotations`` (dataclasses
look string annotations up in ``sys.modules``), and the annotations of the functions it carries
are written as strings instead, so they are never evaluated.  Text from outside the code (the
run's path, the task) is written into it only as string literals that `literal` escapes.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path
from types import ModuleType

from torch import nn

import einsearch.arch
import einsearch.ops.aaren
import einsearch.ops.chunks
import einsearch.ops.delta
import einsearch.ops.gla
import einsearch.ops.newton
import einsearch.ops.rnn
import einsearch.ops.scan
import einsearch.ops.ssd
import einsearch.primitives.attention
import einsearch.primitives.base
import einsearch.primitives.channel
import einsearch.primitives.combinators
import einsearch.primitives.graphs
import einsearch.primitives.hier
import einsearch.primitives.linear_attention
import einsearch.primitives.local
import einsearch.primitives.memory
import einsearch.primitives.rat
import einsearch.primitives.recurrent
import einsearch.primitives.scan
import einsearch.primitives.sparse_attention
import einsearch.primitives.titans
import einsearch.primitives.wired
import einsearch.tasks.shell
from einsearch.arch import Arch
from einsearch.primitives.graphs import GraphArgs, random_graph

# The attribute `einsearch.build` is the function the package re-exports, so this module is named.
BUILD = importlib.import_module("einsearch.build")

# Every module an export may need, in dependency order (a module only uses those above it).
ORDER = (
    einsearch.arch,
    einsearch.ops.chunks,
    einsearch.ops.gla,
    einsearch.ops.delta,
    einsearch.ops.scan,
    einsearch.ops.ssd,
    einsearch.ops.aaren,
    einsearch.ops.rnn,
    einsearch.ops.newton,
    einsearch.primitives.base,
    einsearch.primitives.graphs,
    einsearch.primitives.channel,
    einsearch.primitives.local,
    einsearch.primitives.attention,
    einsearch.primitives.combinators,
    einsearch.primitives.hier,
    einsearch.primitives.scan,
    einsearch.primitives.memory,
    einsearch.primitives.linear_attention,
    einsearch.primitives.sparse_attention,
    einsearch.primitives.titans,
    einsearch.primitives.recurrent,
    einsearch.primitives.rat,
    einsearch.primitives.wired,
    BUILD,
    einsearch.tasks.shell,
)
ALWAYS = (einsearch.arch, einsearch.primitives.base, einsearch.primitives.combinators, BUILD, einsearch.tasks.shell)
BY_NAME = {module.__name__: module for module in ORDER}

_EINSEARCH_IMPORT = re.compile(r"^[ \t]*(from einsearch[\w.]* import (\([^)]*\)|[^\n]*)|import einsearch[^\n]*)\n", re.M)
_FUTURE = re.compile(r"^from __future__ import annotations\n", re.M)


class ExportError(ValueError):
    pass


def modules_used(model: nn.Module) -> list[ModuleType]:
    """The einsearch modules whose source the model needs, in ORDER (dependencies included)."""
    needed = {module.__name__ for module in ALWAYS}
    needed |= {type(m).__module__ for m in model.modules() if type(m).__module__.startswith("einsearch.")}
    changed = True
    while changed:  # close over the modules' top-level einsearch imports (the builder's are lazy)
        changed = False
        for name in list(needed & set(BY_NAME)):
            for node in ast.parse(inspect.getsource(BY_NAME[name])).body:
                if isinstance(node, ast.ImportFrom) and node.module in BY_NAME and node.module not in needed:
                    needed.add(node.module)
                    changed = True
    missing = needed - set(BY_NAME)
    if missing:
        raise ExportError(f"cannot export: no place in the export order for {', '.join(sorted(missing))}")
    return [module for module in ORDER if module.__name__ in needed]


def torch_only_source(module: ModuleType) -> str:
    """The module's source with each op that may run a Triton kernel (a key of the module's
    `TORCH_FORMS`) replaced by its PyTorch form, e.g. `gla = gla_chunked`; the table itself and
    the imports of the kernels go with the functions they were in."""
    source = inspect.getsource(module)
    forms = {op.__name__: form.__name__ for op, form in getattr(module, "TORCH_FORMS", {}).items()}
    lines = source.splitlines(keepends=True)
    for node in reversed(ast.parse(source).body):  # from the bottom, so earlier line numbers hold
        if isinstance(node, ast.FunctionDef) and node.name in forms:
            replacement = f"{node.name} = {forms[node.name]}  # einsearch runs a Triton kernel here on a GPU\n"
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TORCH_FORMS" for t in node.targets):
            replacement = ""
        else:
            continue
        lines[node.lineno - 1 : node.end_lineno] = [replacement]
    return "".join(lines)


def _graph_table(model: nn.Module) -> dict[GraphArgs, tuple[tuple[int, int], ...]]:
    graphs = {m.graph for m in model.modules() if isinstance(getattr(m, "graph", None), GraphArgs)}
    return {args: random_graph(args) for args in sorted(graphs, key=repr)}


def _graphs_source(table: dict[GraphArgs, tuple[tuple[int, int], ...]]) -> str:
    """graphs.py with networkx replaced by the edges this model was built with."""
    source = inspect.getsource(einsearch.primitives.graphs)
    source = source[: source.index("def random_graph")]
    rows = "".join(f"    {args!r}: {edges!r},\n" for args, edges in table.items())
    return source + (
        "EDGES = {\n" + rows + "}\n\n\n"
        "def random_graph(args: GraphArgs) -> tuple[tuple[int, int], ...]:\n"
        '    """The edges recorded at export time (this file does not need networkx)."""\n'
        "    return EDGES[args]\n"
    )


def _strip(source: str) -> str:
    return quote_annotations(_EINSEARCH_IMPORT.sub("", _FUTURE.sub("", source)))


def quote_annotations(source: str) -> str:
    """`source` with every function's parameter and return annotations written as string
    literals: what ``from __future__ import annotations`` does for them, without its reliance on
    ``sys.modules`` for dataclasses (whose field annotations stay ordinary expressions)."""
    data = source.encode()  # ast offsets count UTF-8 bytes
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
            for annotation in [p.annotation for p in params] + [node.returns]:
                if annotation is not None and not isinstance(annotation, ast.Constant):
                    begin = starts[annotation.lineno - 1] + annotation.col_offset
                    spans.append((begin, starts[annotation.end_lineno - 1] + annotation.end_col_offset))
    for begin, end in sorted(spans, reverse=True):
        text = " ".join(data[begin:end].decode().split())
        data = data[:begin] + repr(text).encode() + data[end:]
    return data.decode()


def literal(text: str) -> str:
    """A triple-quoted Python string literal whose value is `text`, for docstrings: backslashes,
    double quotes and every unprintable character (control characters, lone surrogates from
    undecodable file names) are escaped, so no text can end the literal or break the file."""
    def escape(char: str) -> str:
        if char in '\\"':
            return "\\" + char
        return char if char == "\n" or char.isprintable() else repr(char)[1:-1]

    return '"""' + "".join(map(escape, text)) + '"""'


def _check_names(sections: dict[str, str]) -> None:
    """Two modules defining the same top-level name would silently shadow each other."""
    owner: dict[str, str] = {}
    for module, source in sections.items():
        for node in ast.parse(source).body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for name in names:
                if name in owner and owner[name] != module and not name.startswith("__"):
                    raise ExportError(f"cannot export: {name!r} is defined in both {owner[name]} and {module}")
                owner[name] = module


def shell_call(model: nn.Module) -> str:
    """The keyword arguments, beyond blocks and d_model, that rebuild the model's shell."""
    options = getattr(model, "options", None)
    if options is None:
        raise ExportError(f"cannot export a {type(model).__name__}: its shell does not declare `options`")
    return "".join(f", {k}={v!r}" for k, v in options.items())


def export_source(arch: Arch, model: nn.Module, d_model: int, layers: int, note: str = "") -> str:
    """The standalone file for `arch` built as `model` (a task shell of `layers` blocks)."""
    sections = {}
    for module in modules_used(model):
        graphs = module is einsearch.primitives.graphs
        source = _graphs_source(_graph_table(model)) if graphs else torch_only_source(module)
        sections[module.__name__] = _strip(source)
    _check_names(sections)
    body = "\n\n".join(f"# {'-' * 20} from {name.replace('.', '/')}.py\n\n{src.strip()}\n" for name, src in sections.items())
    docstring = (
        f"{arch.text}\n\n"
        + (f"{note}\n\n" if note else "")
        + "Generated by `einsearch export`: a standalone module that needs only torch.\n"
        "    model = Candidate()                      # d_model and layers default to the search's\n"
        "    model.load_state_dict(safetensors.torch.load_file(weights_path))\n"
    )
    header = literal(docstring) + "\n\n"
    stacks = f"{model.stacks} * " if model.stacks > 1 else ""  # e.g. a forecast's seasonal and trend stacks
    footer = textwrap.dedent(
        f'''

        # {'-' * 20} the candidate

        ARCH = {arch!r}


        class Candidate({type(model).__name__}):
            {literal(arch.text)}

            def __init__(self, d_model: int = {d_model}, layers: int = {layers}):
                super().__init__(build_blocks(ARCH, d_model, {stacks}layers), d_model{shell_call(model)})
        '''
    )
    return header + body + footer


def write_export(path: str | Path, arch: Arch, model: nn.Module, d_model: int, layers: int, note: str = "") -> Path:
    path = Path(path)
    path.write_text(export_source(arch, model, d_model, layers, note), encoding="utf-8")
    return path


def export_trial(run: str | Path, rank: int, output: str | Path, weights: bool = False) -> list[Path]:
    """Export the candidate at `rank` of a run's leaderboard; with `weights`, also its trained
    weights as <output>.safetensors.  Returns the paths written."""
    from einsearch.grammar import parse
    from einsearch.report import leaderboard
    from einsearch.search.config import RunConfig
    from einsearch.search.record import RunFolder
    from einsearch.tasks import get_task

    folder = RunFolder(run)
    config = RunConfig.from_dict(folder.read_config())
    task = get_task(config.task)
    board = leaderboard(folder.trials(), maximize=task.mode == "max")
    if rank > len(board):
        raise ExportError(f"{folder.path} has {len(board)} scored trial(s); there is no rank {rank}")
    record = board[rank - 1].record
    source = folder.weights_path(record.number)
    if weights and not source.exists():
        raise ExportError(f"the weights of trial {record.number} were not kept (a run keeps the best {config.keep_weights})")
    arch = parse(record.arch)
    note = f"Trial {record.number} of {folder.path} on {task.spec}: val/{task.metric} = {record.objectives[0]:.6g}."
    written = [write_export(output, arch, task.model(arch, config.d_model, config.layers), config.d_model, config.layers, note)]
    if weights:
        target = Path(output).with_suffix(".safetensors")
        target.write_bytes(source.read_bytes())
        written.append(target)
    return written
