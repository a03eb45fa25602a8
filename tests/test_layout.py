"""docqa's imports run one way: no module imports a layer above its own, and no import cycle.

Every import counts: at module level, inside functions (the lazy ones that keep `docqa --help`
light) and under TYPE_CHECKING. The layers, lowest first (a module may import its own layer and
the ones below it; docqa/__init__.py's docstring shows the same picture):

 0 foundation  docqa (the package: version, lazy exports), errors, config, files, build,
               answer.prompt and answer.citations (pure: prompts, conversation state, citation
               matching; the answer model below them in models/ uses them)
 1 inputs      inputs.*                      files -> page images
 2 models      models.* (engines included), cluster.ray_runtime (connecting to Ray, used by the
               Ray ingest pipeline and by the shards)
 3 index       index.*                       the storage engine of one index folder
 4 ingest      ingest.*                      plan, local and Ray pipelines, report: write to index/
 5 api         api                           DocIndex (the facade), Hit, the Searchable protocol
 6 answer      answer.* (ask, grounding)     hits -> grounded answers
 7 eval        eval, cluster.* (shards)      what searches one index or several
 8 serve       serve.*                       HTTP
 9 cli         cli.*, __main__               parse, call, print
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "docqa"

# (module or package prefix, layer); the longest matching prefix decides
LAYERS = {
    "docqa": 0,
    "docqa.errors": 0,
    "docqa.config": 0,
    "docqa.files": 0,
    "docqa.build": 0,
    "docqa.answer.prompt": 0,
    "docqa.answer.citations": 0,
    "docqa.inputs": 1,
    "docqa.models": 2,
    "docqa.cluster.ray_runtime": 2,
    "docqa.index": 3,
    "docqa.ingest": 4,
    "docqa.api": 5,
    "docqa.answer": 6,
    "docqa.eval": 7,
    "docqa.cluster": 7,
    "docqa.watch": 7,
    "docqa.serve": 8,
    "docqa.cli": 9,
    "docqa.__main__": 9,
}
# a package's __init__ that only names its room (a docstring, or lazy re-exports) sits in its room
_ROOMS = {"docqa.answer": 6, "docqa.cluster": 7}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    if module in _ROOMS:
        return _ROOMS[module]
    prefix = max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)
    return LAYERS[prefix]


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The docqa modules `module` imports anywhere in its source (functions and TYPE_CHECKING too)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            if not (name == "docqa" or name.startswith("docqa.")):
                continue
            while name not in modules:  # a name inside a module: the module
                name = name.rsplit(".", 1)[0]
            if name != module:
                targets.add(name)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def test_every_module_has_a_layer():
    for module in _modules():
        assert _layer(module) in range(10), module


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_walker_sees_lazy_and_type_only_imports():
    graph = _graph()
    assert "docqa.ingest.ray" in graph["docqa.api"]  # imported inside DocIndex.ingest
    assert "docqa.models.retriever" in graph["docqa.api"]  # under TYPE_CHECKING
    assert "docqa.index" in graph["docqa.ingest.local"]  # under TYPE_CHECKING


def test_the_index_is_entered_only_through_its_package():
    """Outside docqa/index/, modules import the names docqa/index/__init__.py exports, never its
    modules: the storage engine's insides can move without touching its callers."""
    reaching_in = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if not (module == "docqa.index" or module.startswith("docqa.index."))
        for target in sorted(targets)
        if target.startswith("docqa.index.")
    ]
    assert not reaching_in, "\n".join(reaching_in)


def test_the_search_contract_is_implemented(tmp_path):
    """DocIndex, the shard set and the server's read-only view are Searchable (structurally: the
    protocol is runtime-checkable; mypy checks the signatures)."""
    from docqa.api import DocIndex, Searchable, VectorSearchable
    from docqa.cluster.shards import ShardSet
    from docqa.serve.service import Service, _ReadOnly

    index = DocIndex.open(tmp_path / "a", create=True)
    shards = ShardSet.open([tmp_path / "a"])
    service = Service(tmp_path / "a")
    try:
        for searchable in (index, shards):
            assert isinstance(searchable, VectorSearchable) and isinstance(searchable, Searchable)
        view = _ReadOnly(service)
        assert isinstance(view, Searchable) and not isinstance(view, VectorSearchable)
        assert view.search("anything") == [] and index.search("anything") == shards.search("anything") == []
    finally:
        service.close()
        shards.close()
        index.close()
