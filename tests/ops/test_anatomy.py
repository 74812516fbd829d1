"""Every op has the same parts (docs/architecture.md, "Adding an op").

- kernels/<op>.py holds @triton.jit code and launchers only: it imports
  nothing from mzsr_fast and registers nothing with torch.library;
- mzsr_fast/ops/<op>.py holds every torch.library registration of the op, for
  every backend; no other module of the package makes one;
- the Triton op of each schema is mzsr_fast::<name>_triton, implemented by
  the launcher <name> of kernels/<op>.py, with the schema of the C++ op
  mzsr_fast::<name> (csrc/ops/<op>.cpp);
- the package imports and runs its other backends where Triton is missing;
- a CPU-only op (dispatch.CPU_ONLY) has a schema, a CPU kernel, its
  mzsr_fast/ops/<op>.py, a reference, a test and a benchmark, and no Triton or
  CUDA files.
"""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mzsr_fast import _extension, dispatch
from op_backends import device_of

ROOT = Path(__file__).resolve().parents[2]
OPS = tuple(dispatch.PREFERENCE)
CPU_ONLY = dispatch.CPU_ONLY


def _uses_torch_library(tree: ast.AST) -> bool:
    """Whether the code names torch.library (docstrings and comments do not count)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "library" and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.library"):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(a.name.startswith("torch.library")
                                                                  for a in node.names):
            return True
    return False


def _imported_modules(tree: ast.AST) -> list[str]:
    """Modules the code imports, a relative import written with its dots."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_ops_have_their_files():
    for op in OPS:
        assert (ROOT / "kernels" / f"{op}.py").is_file(), op
        assert (ROOT / "mzsr_fast" / "ops" / f"{op}.py").is_file(), op
        assert (ROOT / "mzsr_fast" / "reference" / f"{op}.py").is_file(), op
        assert (ROOT / "csrc" / "ops" / f"{op}.cpp").is_file(), op  # the schema
        for backend, suffix in (("cpu", "cpp"), ("cuda", "cu")):
            assert (ROOT / "csrc" / "ops" / backend).is_dir()
            assert list((ROOT / "csrc" / "ops" / backend).glob(f"{op}*.{suffix}")), (op, backend)


def test_cpu_only_ops_have_their_files():
    for op in CPU_ONLY:
        for path in (f"csrc/ops/{op}.cpp", f"csrc/ops/cpu/{op}.cpp", f"mzsr_fast/ops/{op}.py",
                     f"mzsr_fast/reference/{op}.py", f"tests/ops/test_{op}.py",
                     f"benchmarks/bench_{op}.py"):
            assert (ROOT / path).is_file(), path
        assert not (ROOT / "kernels" / f"{op}.py").exists() and not list((ROOT / "csrc/ops/cuda").glob(f"{op}*"))


def test_cpu_only_ops_report_their_kernels(monkeypatch):
    """dispatch.NATIVE_OPS lists a CPU-only op's schemas (all in the built
    extension), and cpu_only_ops() (mzsr-fast info) names one that is missing."""
    if _extension.LOAD_ERROR is not None:
        pytest.skip(_extension.LOAD_ERROR)
    for op in CPU_ONLY:
        names = dispatch.NATIVE_OPS[op]
        assert names[0] == op and all(_extension.native_op(name) is not None for name in names)
        assert dispatch.cpu_only_ops()[op] == "available"
        dispatch.unavailable_reason.cache_clear()
        monkeypatch.setattr(_extension, "has_kernel", lambda name, key: name != names[-1])
        try:
            assert f"no CPU kernel for {names[-1]}: rebuild the extension" in dispatch.cpu_only_ops()[op]
        finally:
            monkeypatch.undo()
            dispatch.unavailable_reason.cache_clear()


def test_kernels_import_nothing_from_the_package():
    """kernels/ depends on torch and triton only: no import of mzsr_fast (by
    name, by a relative import out of the package, or through importlib) and
    no torch.library registration."""
    paths = sorted((ROOT / "kernels").glob("*.py"))
    assert {p.stem for p in paths} >= set(OPS)
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for name in _imported_modules(tree):
            assert not name.startswith(".."), f"{path.name}: imports {name} (out of kernels/)"
            assert name.split(".")[0] not in ("mzsr_fast", "importlib"), f"{path.name}: imports {name}"
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name)}
        assert "__import__" not in calls, path.name
        assert not _uses_torch_library(tree), f"{path.name}: uses torch.library"


def test_registrations_live_in_the_op_modules():
    op_modules = {ROOT / "mzsr_fast" / "ops" / f"{op}.py" for op in OPS + CPU_ONLY}
    for path in sorted((ROOT / "mzsr_fast").rglob("*.py")):
        uses = _uses_torch_library(ast.parse(path.read_text(), str(path)))
        assert uses == (path in op_modules), f"{path.relative_to(ROOT)}: torch.library " + \
            ("missing" if path in op_modules else "outside mzsr_fast/ops/<op>.py")


def _signature(schema: torch._C.FunctionSchema):
    return ([(a.name, str(a.type)) for a in schema.arguments], [str(r.type) for r in schema.returns])


@pytest.mark.parametrize("op", OPS)
def test_triton_ops_match_the_schemas(op):
    """mzsr_fast::<name>_triton for every schema of the op, with the
    arguments of the C++ op mzsr_fast::<name> where the extension is loaded."""
    module = importlib.import_module(f"mzsr_fast.ops.{op}")
    assert module._SCHEMAS and next(iter(module._SCHEMAS)) == op
    for name, schema in module._SCHEMAS.items():
        want = _signature(torch._C.parse_schema(f"mzsr_fast::{name}{schema}"))
        assert _signature(getattr(torch.ops.mzsr_fast, f"{name}_triton").default._schema) == want, name
        native = _extension.native_op(name)
        if native is not None:
            assert _signature(native._schema) == want, f"{name}: csrc/ops/{op}.cpp differs from _SCHEMAS"


@pytest.mark.parametrize("op", OPS)
def test_dispatch_checks_every_native_op(op, monkeypatch):
    """dispatch.NATIVE_OPS lists the op's schemas, and an extension lacking one
    of them (built from older sources) leaves the C++ backend unavailable."""
    names = tuple(importlib.import_module(f"mzsr_fast.ops.{op}")._SCHEMAS)
    assert dispatch.NATIVE_OPS[op] == names
    if _extension.LOAD_ERROR is not None:
        pytest.skip(_extension.LOAD_ERROR)
    dispatch.unavailable_reason.cache_clear()
    monkeypatch.setattr(_extension, "has_kernel", lambda name, key: name != names[-1])
    try:
        assert f"no CPU kernel for {names[-1]}: rebuild the extension" in dispatch.unavailable_reason("cpu", op, "cpu")
    finally:
        dispatch.unavailable_reason.cache_clear()


@pytest.mark.parametrize("op", OPS)
def test_triton_launchers_are_named_after_the_ops(op):
    reason = dispatch.unavailable_reason("triton", op, device_of("triton"))
    if reason is not None:
        pytest.skip(f"backend 'triton' unavailable: {reason}")
    kernels = importlib.import_module(dispatch.TRITON_MODULES[op])
    for name in importlib.import_module(f"mzsr_fast.ops.{op}")._SCHEMAS:
        assert callable(getattr(kernels, name, None)), f"kernels/{op}.py has no launcher {name}"


def test_import_without_triton():
    """Where triton cannot be imported, the package imports, reports the
    Triton backend unavailable with the reason, and runs the others."""
    code = """
import sys
sys.modules["triton"] = None  # import triton raises ImportError
import torch
import mzsr_fast as mz
for op, backends in mz.backends().items():
    assert backends["triton"].startswith("triton is not installed"), (op, backends["triton"])
    assert backends["torch"] == "available", op
x = torch.rand(1, 3, 9, 8)
assert mz.blur_downsample(x, torch.ones(3, 3) / 9, 2).shape == (1, 3, 5, 4)
assert mz.anisotropic_blur_downsample(x, 0.3, 2.0, 1.0, 5, 2).shape == (1, 3, 5, 4)
assert torch.equal(mz.sgd_step([torch.ones(2)], [torch.ones(2)], 0.5)[0], torch.full((2,), 0.5))
try:
    mz.blur_downsample(x, torch.ones(3, 3) / 9, 2, backend="triton")
except ValueError as error:
    assert "triton is not installed" in str(error), error
else:
    raise AssertionError("backend='triton' ran without triton")
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
