"""The maps are true: every repository path, module name and setting that docs/architecture.md,
docs/serving.md and README.md name exists.

Checked statically (files and `ast`, nothing imported, so no TensorFlow): a backticked path
under one of the project's folders (`service/core/engine.py`, `service/kinds/`, a bare
`gan_config.py` after a path on the same line is in that path's folder), `path.py`
(`name`) and `path.py::name`, a dotted name (`contract.card.ModelCard`: the module's file,
then the name defined in it, then the attribute defined in that class), the file trees in
fenced blocks (serving.md's `service/` tree), and every `DIPTYCH_*` variable and every
TOML-looking span (`max_images = 8`) as a field of `service.core.config.Settings`. Each
failure names the document, the line and what is missing. The serving side's code is a map
too: a file its comments and docstrings name is there.
"""

from __future__ import annotations

import ast
import functools
import re
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ["docs/architecture.md", "docs/serving.md", "README.md"]
FOLDERS = ("training", "contract", "service", "proto", "deploy", "tests", "docs", "benchmarks")
NOT_SETTINGS = {  # DIPTYCH_* variables that are no field of Settings, and what reads them
    "CONFIG": "names the TOML file (service/core/config.py)",
    "WORKERS": "the container image's BentoML workers (deploy/image/)",
    "REQUIRE_TOOLS": "tests/conftest.py: CI fails instead of skipping",
    "REQUIRE_DOCKER": "tests/docker_engine.py: CI fails instead of skipping",
}
FILE_SUFFIX = re.compile(r"\.(py|json|md|toml|ya?ml|proto|txt|cfg|sh|npz|tflite|pth|png)$")
PATH = re.compile(rf"(?:{'|'.join(FOLDERS)})/[\w./-]*(?:::\w+)?")
DOTTED = re.compile(rf"(?<![\w/.-])(?:{'|'.join(FOLDERS)})(?:\.\w+)+")
PATH_WITH_NAME = re.compile(r"`([\w./-]+\.py)` \(`(\w+)`\)")
CODE_FILE = re.compile(r"(?<![\w/.*-])[A-Za-z][\w/.-]*\.py\b")  # `manager.py`, `core/manager/control.py`
VARIABLE = re.compile(r"\bDIPTYCH_([A-Z][A-Z0-9_]*[A-Z0-9])|`\.\.\._([A-Z][A-Z0-9_]*)`")


@functools.cache
def defined_names(path: Path) -> dict[str, set[str]]:
    """{name defined at the top of the module: names defined in it if it is a class}."""
    names: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text()).body:
        for name in bound_names(node):
            names[name] = {inner for child in getattr(node, "body", []) for inner in bound_names(child)} \
                if isinstance(node, ast.ClassDef) else set()
    return names


def bound_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names]
    return []


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)


def dotted_problem(name: str) -> str | None:
    """None if `name` (a module, then names inside it) is defined, else what is missing."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        if (path := module_file(parts[:split])) is None:
            continue
        if split == len(parts):
            return None
        outer, *inner = parts[split:]
        names = defined_names(path)
        if outer not in names:
            return f"`{name}`: {path.relative_to(ROOT)} defines no `{outer}`"
        if inner and names[outer] and inner[0] not in names[outer]:
            return f"`{name}`: `{outer}` in {path.relative_to(ROOT)} defines no `{inner[0]}`"
        return None
    return f"`{name}`: no module {'/'.join(parts[:1])}/... of that name"


def path_problem(text: str) -> str | None:
    path, _, name = text.partition("::")
    if not (ROOT / path).exists():
        return f"`{text}` does not exist"
    if name and name not in defined_names(ROOT / path):
        return f"`{text}`: {path} defines no `{name}`"
    return None


def fenced_blocks(lines: list[str]) -> list[tuple[int, str, list[str]]]:
    """(first line number, language, lines) of each ``` block."""
    blocks, start, language = [], None, ""
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start, language = number + 1, line[3:].strip()
            else:
                blocks.append((start, language, lines[start - 1:number - 1]))
                start = None
    return blocks


TREE_ENTRY = re.compile(r"( *)([\w.-]+/|[\w.-]+/[\w.-]+\.\w+|[\w.-]+\.\w+)(?:\s|$)")


def tree_paths(start: int, block: list[str]) -> list[tuple[int, str]]:
    """(line number, repository path) of each entry of a file tree drawn by indentation."""
    parents: list[tuple[int, str]] = []
    found = []
    for number, line in enumerate(block, start):
        if not (entry := TREE_ENTRY.match(line)):
            continue
        indent, name = len(entry[1]), entry[2]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = (parents[-1][1] if parents else "") + name
        found.append((number, path))
        if name.endswith("/"):
            parents.append((indent, path))
    return found


def settings_fields() -> set[str]:
    tree = ast.parse((ROOT / "service" / "core" / "config.py").read_text())
    (settings,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"]
    return {node.target.id for node in settings.body if isinstance(node, ast.AnnAssign)}


def toml_keys(text: str) -> set[str]:
    """The top-level keys of `text` if it reads as TOML (`...` as an elision), else none."""
    try:
        return set(tomllib.loads(text.replace("...", "")))
    except tomllib.TOMLDecodeError:
        return set()


def line_problems(line: str, fields: set[str]) -> list[str]:
    problems = []
    folder, end = None, 0  # a list of files (`a/b.py`, `c.py`) is in the first one's folder
    for match in re.finditer(r"`([^`]+)`", line):
        span, listed = match[1], re.fullmatch(r",? *(and )?", line[end:match.start()])
        end = match.end()
        if PATH.fullmatch(span):
            problems.append(path_problem(span))
            folder = span if span.endswith("/") else span.rpartition("/")[0] + "/"
        elif re.fullmatch(r"[\w-]+\.py", span) and folder and listed:
            problems.append(path_problem(folder + span))
        else:
            folder = None
            if not FILE_SUFFIX.search(span):
                problems += [dotted_problem(name) for name in DOTTED.findall(span)]
        if re.match(r"[a-z_]+ = ", span):
            problems += [f"`{key}` is no setting (service.core.config.Settings)" for key in toml_keys(span) - fields]
    for file, name in PATH_WITH_NAME.findall(line):
        if (ROOT / file).is_file() and name not in defined_names(ROOT / file):
            problems.append(f"`{file}` (`{name}`): {file} defines no `{name}`")
    first = None
    for variable, continued in VARIABLE.findall(line):
        name = variable or (first and f"{first}_{continued}")
        first = first or variable
        if name and name not in NOT_SETTINGS and name.lower() not in fields:
            problems.append(f"DIPTYCH_{name} is no setting (service.core.config.Settings)")
    return [problem for problem in problems if problem]


def doc_problems(doc: str) -> list[str]:
    lines = (ROOT / doc).read_text().splitlines()
    fields = settings_fields()
    inside = set()
    problems = []
    for start, language, block in fenced_blocks(lines):
        inside |= set(range(start - 1, start + len(block) + 1))
        first = next((line for line in block if line.strip()), "")
        if re.fullmatch(r"[\w.-]+/", first.strip()):
            problems += [f"{doc}:{number}: `{path}` does not exist"
                         for number, path in tree_paths(start, block) if not (ROOT / path).exists()]
        if language == "toml":
            problems += [f"{doc}:{start}: `{key}` is no setting (service.core.config.Settings)"
                         for key in toml_keys("\n".join(block)) - fields]
    for number, line in enumerate(lines, 1):
        if number not in inside:
            problems += [f"{doc}:{number}: {problem}" for problem in line_problems(line, fields)]
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_name_and_setting_a_map_names_exists(doc):
    problems = doc_problems(doc)
    assert not problems, "\n".join(problems)


def code_problems(path: Path) -> list[str]:
    """The files `path` names (`x.py`, `a/b.py`) that are in none of its folders, from its own up
    to the repository's: a name left behind when a file moved."""
    folders = [folder for folder in path.parents if folder == ROOT or ROOT in folder.parents]
    return [f"{path.relative_to(ROOT)}:{number}: `{name}` does not exist"
            for number, line in enumerate(path.read_text().splitlines(), 1)
            for name in CODE_FILE.findall(line) if not any((folder / name).is_file() for folder in folders)]


@pytest.mark.parametrize("package", ["service", "contract"])
def test_every_file_the_code_names_exists(package):
    problems = [problem for path in sorted((ROOT / package).rglob("*.py")) if "_pb2" not in path.name
                for problem in code_problems(path)]
    assert not problems, "\n".join(problems)
