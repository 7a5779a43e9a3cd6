"""The layout's rules, checked on the source: the serving side imports no project package, and the
client neither imports the model factory nor reads the server's files."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"client", "export", "deploy", "bench", "tests"}


def _python_files(*folders: str) -> list[Path]:
    files = [p for f in folders for p in (ROOT / f).rglob("*.py")]
    return [p for p in files if "retrieval_contract" not in p.parts and "__pycache__" not in p.parts]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _string_constants(path: Path) -> list[str]:
    """String literals that are not docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("path", _python_files("model_repository", "deploy/backends"), ids=lambda p: str(p.relative_to(ROOT)))
def test_serving_code_imports_no_project_package(path):
    assert not _imported_packages(path) & PROJECT_PACKAGES, f"{path} imports {_imported_packages(path) & PROJECT_PACKAGES}"


def test_there_is_serving_code_to_check():
    assert len(_python_files("model_repository", "deploy/backends")) >= 2


@pytest.mark.parametrize("path", _python_files("client"), ids=lambda p: str(p.relative_to(ROOT)))
def test_client_imports_neither_the_model_factory_nor_the_deployment(path):
    bad = _imported_packages(path) & {"export", "deploy", "bench", "tests"}
    assert not bad, f"{path} imports {bad}"


CLIENT_CODE = [p for p in _python_files("client") if p.name != "spec.py"]  # the contract names the file; it reads nothing


@pytest.mark.parametrize("path", CLIENT_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_client_reads_no_server_files(path):
    hits = [s for s in _string_constants(path) if "model_repository" in s or s.endswith(".onnx")]
    assert not hits, f"{path} names server files: {hits}"
    names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, (ast.Attribute, ast.Name))}
    assert not names & {"onnx_file", "ONNX_FILENAME"}, f"{path} locates ONNX files"


def test_the_contract_imports_nothing_but_itself():
    for name in ("spec.py", "imaging.py"):
        path = ROOT / "client" / name
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in PROJECT_PACKAGES, f"{path}: absolute import of {node.module}"
