"""The Triton kernels compiled for an H100/H200 (sm_90) without a GPU.

Under TRITON_INTERPRET=1 the tests run the kernels' Python, not Triton's
compiler: code that the interpreter accepts can still fail to compile (a
ternary of int64 and int32 did, in sgd_step), and the interpreter says
nothing about the instructions chosen. Here every kernel is compiled ahead of
time to PTX for sm_90 (Triton's own ptxas, no device needed) and the PTX is
checked where the numerics depend on it: sgd_step's update is a separate
multiply and subtract (mul.rn, sub.rn), never an FMA and never flushing
denormals (csrc/ops/sgd_step_math.h), and no kernel uses sin.approx /
cos.approx. The compiler runs in a subprocess without TRITON_INTERPRET
(tests/conftest.py turns the interpreter on for this process).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _ptx_of(module_name: str, kernel: str, signature: dict, constexprs: dict, options: dict) -> str:
    """PTX of kernels/MODULE.py's KERNEL for sm_90, compiled in the subprocess."""
    import importlib.util

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = importlib.util.spec_from_file_location(f"_aot_{module_name}", ROOT / "kernels" / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, kernel)
    constexprs = {k: getattr(tl, v[3:]) if isinstance(v, str) and v.startswith("tl.") else v
                  for k, v in constexprs.items()}
    signature = {k: tuple(v) if isinstance(v, list) else v for k, v in signature.items()}
    compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                              options=options)
    return compiled.asm["ptx"]


def _compile(jobs: list[dict]) -> list[str]:
    """Each job {module, kernel, signature, constexprs, options} compiled to PTX in one subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "ops"), str(ROOT), env.get("PYTHONPATH", "")])
    code = ("import json, sys, test_triton_compile as t\n"
            "jobs = json.load(sys.stdin)\n"
            "print(json.dumps([t._ptx_of(j['module'], j['kernel'], j['signature'], j['constexprs'], j['options'])"
            " for j in jobs]))\n")
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(jobs), env=env, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0 and "ptxas" in result.stderr and "not found" in result.stderr:
        pytest.skip("Triton cannot compile for sm_90 here (no ptxas)")
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_sgd_step_compiles_to_two_roundings():
    from mzsr_fast.kernels import sgd_step as module

    jobs, cases = [], []
    n = 3
    for dtype in ("fp32", "fp64", "fp16"):
        for has_params in (True, False):
            signature = {"p": [f"*{dtype}"] * n, "g": [f"*{dtype}"] * n, "o": [f"*{dtype}"] * n,
                         "first": ["i64"] * (n + 1), "slice_len": ["i64"] * n, "per_slice": ["i64"] * n,
                         "column": ["i64"] * n, "broadcast": ["i32"] * n,
                         "rates": "*fp64" if dtype == "fp64" else "*fp32", "rates_task_stride": "i64",
                         "N": "constexpr", "HAS_PARAMS": "constexpr", "BLOCK": "constexpr"}
            jobs.append(dict(module="sgd_step", kernel="_sgd_step_kernel", signature=signature,
                             constexprs={"N": n, "HAS_PARAMS": has_params, "BLOCK": module.BLOCK},
                             options={"enable_fp_fusion": False}))
            cases.append((dtype, has_params))
    for (dtype, has_params), ptx in zip(cases, _compile(jobs)):
        compute = "f64" if dtype == "fp64" else "f32"
        assert not re.search(r"\bfma\.rn\.(ftz\.)?f(32|64)\b", ptx), (dtype, has_params)
        assert re.search(rf"\bmul\.rn\.{compute}\b", ptx), (dtype, has_params)
        assert not has_params or re.search(rf"\bsub\.rn\.{compute}\b", ptx), (dtype, has_params)
        assert ".ftz" not in ptx, (dtype, has_params)


def test_blur_kernels_compile():
    kernels = {  # kernel: its constexpr values (k 5, stride 2)
        "_blur_fwd_kernel": {},
        "_gaussian_blur_fwd_kernel": {"KP": 8},
        "_blur_bwd_x_kernel": {"T": 3},
        "_blur_bwd_w_kernel": {},
    }
    import inspect

    from mzsr_fast.kernels import blur_downsample as module

    jobs, names = [], []
    for dtype, acc in (("fp32", "tl.float32"), ("fp64", "tl.float64")):
        for kernel, extra in kernels.items():
            constexprs = dict(K=5, S=2, ACC=acc, BLOCK_H=8, BLOCK_W=32, **extra)
            arg_names = list(inspect.signature(getattr(module, kernel).fn).parameters)
            signature = {name: "constexpr" if name in constexprs else f"*{dtype}" if name.endswith("_ptr")
                         else "i32" for name in arg_names}
            jobs.append(dict(module="blur_downsample", kernel=kernel, signature=signature, constexprs=constexprs,
                             options={}))
            names.append((dtype, kernel))
    for name, ptx in zip(names, _compile(jobs)):
        assert ".entry" in ptx, name
        assert not re.search(r"\b(sin|cos)\.approx", ptx), name
        if name == ("fp32", "_gaussian_blur_fwd_kernel"):  # the weights' divisions are IEEE (div_rn)
            assert "div.rn.f32" in ptx and "div.full.f32" not in ptx
