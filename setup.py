"""Builds mzsr_fast and its extension mzsr_fast._C.

C++ CPU ops are always built. CUDA sources (csrc/ops/cuda/*.cu) are added when
torch has CUDA and nvcc is found. Environment switches:
  MZSR_FAST_CUDA=1 / 0   force / skip the CUDA sources
  TORCH_CUDA_ARCH_LIST   GPU architectures (torch's own variable)
  MAX_JOBS               parallel compile jobs (torch's own variable)
Install with `pip install --no-build-isolation -e .` so the extension is built
against the torch already installed.
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_flags() -> dict[str, list[str]]:
    """{"cxx": [...], "nvcc": [...]} from csrc/compile_flags.txt (shared with CMakeLists.txt)."""
    flags = {}
    with open(os.path.join(HERE, "csrc", "compile_flags.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                language, _, values = line.partition(":")
                flags[language.strip()] = values.split()
    return flags


def want_cuda() -> bool:
    switch = os.environ.get("MZSR_FAST_CUDA")
    if switch is not None:
        return switch == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
    flags = compile_flags()
    cxx_flags = flags["cxx"] + ["-fopenmp", "-std=c++17"]
    common = dict(name="mzsr_fast._C", include_dirs=[os.path.join(HERE, "csrc")],
                  extra_link_args=["-fopenmp"])
    if want_cuda():
        cuda = sorted(glob.glob("csrc/ops/cuda/*.cu"))
        return CUDAExtension(sources=cpp + cuda, define_macros=[("MZSR_FAST_WITH_CUDA", "1")],
                             extra_compile_args={"cxx": cxx_flags, "nvcc": flags["nvcc"]},
                             **common)
    return CppExtension(sources=cpp, extra_compile_args={"cxx": cxx_flags}, **common)


setup(
    name="mzsr_fast",
    version="0.1.0",
    description="Fast zero-shot super-resolution by meta-transfer learning (MZSR) for PyTorch",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["mzsr_fast", "mzsr_fast.ops", "mzsr_fast.reference", "mzsr_fast.kernels",
              "mzsr_fast.train"],
    package_dir={"mzsr_fast.kernels": "kernels"},
    package_data={"mzsr_fast": ["weights/*.safetensors", "weights/*.md", "data/*.png"]},
    install_requires=["torch>=2.5", "numpy", "pillow", "pypng", "safetensors"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "scipy"]},
    entry_points={"console_scripts": ["mzsr-fast = mzsr_fast.cli:main"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
