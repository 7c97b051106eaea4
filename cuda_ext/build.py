"""Ahead-of-time build of ``cuda_ext._C`` for setup.py (imports torch only when building).

Switches (environment):
  FEDCORE_BUILD_EXT=0          build no extension; cuda_ext uses its pure-torch fallback.
  FEDCORE_BUILD_CUDA=auto      (default) CUDA kernels if a CUDA *toolkit* is found, else C++ only.
                               torch.cuda.is_available() is not consulted: build machines
                               have nvcc but no GPU.
  FEDCORE_BUILD_CUDA=0|1       C++ only | CUDA required (fails loudly if impossible).
The toolkit root comes from CUDA_HOME / CUDA_PATH, /usr/local/cuda, or the nvcc on PATH
(following a wrapper script to the real binary). TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0".
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
ROOT = HERE.parent
DEFAULT_ARCHS = "8.0;9.0"
EXT_NAME = "cuda_ext._C"


def source_files() -> list[Path]:
    return sorted(p for p in CSRC.iterdir() if p.suffix in {".h", ".cuh", ".cpp", ".cu"})


def is_cuda_only(path: Path) -> bool:
    """csrc files named cuda_* need the CUDA toolkit (c10/cuda headers, the runtime)."""
    return path.name.startswith("cuda_") or path.suffix in {".cu", ".cuh"}


def source_hash() -> str:
    """Hash of the C++/CUDA sources, baked into the module so tests can spot a stale build."""
    h = hashlib.sha256()
    for p in source_files():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime.h").exists()


def find_cuda_home() -> str | None:
    """Toolkit root, or None. A wrapper `nvcc` script is followed to the real binary."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and _is_toolkit(Path(os.environ[var])):
            return os.environ[var]
    if _is_toolkit(Path("/usr/local/cuda")):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        if _is_toolkit(real.parent.parent):
            return str(real.parent.parent)
        try:
            text = real.read_text(errors="ignore")[:4096]
        except OSError:
            text = ""
        for m in re.finditer(r"(/[^\s'\"]+)/bin/nvcc\b", text):
            if _is_toolkit(Path(m.group(1))):
                return m.group(1)
    return None


def build_mode() -> str:
    mode = os.environ.get("FEDCORE_BUILD_CUDA", "auto").strip().lower() or "auto"
    if mode not in {"auto", "0", "1"}:
        raise ValueError(f"FEDCORE_BUILD_CUDA must be auto, 0 or 1, not {mode!r}")
    return mode


def _log(msg: str) -> None:
    print(f"[cuda_ext.build] {msg}", file=sys.stderr)


def _write_build_info(mode: str, archs: str) -> Path:
    gen = ROOT / "build" / "fedcore_gen"
    gen.mkdir(parents=True, exist_ok=True)
    text = ("#pragma once\n"
            f'#define FEDCORE_SRC_HASH "{source_hash()}"\n'
            f'#define FEDCORE_BUILD_MODE "{mode}"\n'
            f'#define FEDCORE_CUDA_ARCHS "{archs}"\n')
    info = gen / "build_info.h"
    if not info.exists() or info.read_text() != text:  # keep mtime: no needless rebuilds
        info.write_text(text)
    return gen


def get_extensions() -> tuple[list, dict]:
    """(ext_modules, cmdclass) for setup(); empty when the extension is switched off."""
    if os.environ.get("FEDCORE_BUILD_EXT", "1").strip() == "0":
        _log("FEDCORE_BUILD_EXT=0: no extension, cuda_ext will use the pure-torch fallback")
        return [], {}
    mode = build_mode()
    cuda_home = find_cuda_home() if mode != "0" else None
    if mode == "1" and cuda_home is None:
        raise RuntimeError("FEDCORE_BUILD_CUDA=1 but no CUDA toolkit found "
                           "(set CUDA_HOME to the toolkit root, e.g. /usr/local/cuda)")
    use_cuda = cuda_home is not None
    if cuda_home is not None:
        # Must precede importing torch.utils.cpp_extension, which reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:  # e.g. an isolated build env without torch
        if mode == "1":
            raise RuntimeError("building cuda_ext needs torch importable at build time; "
                               "use pip install --no-build-isolation") from exc
        _log(f"torch not importable ({exc}); skipping the extension (pure-torch fallback)")
        return [], {}
    if use_cuda and torch.version.cuda is None:
        if mode == "1":
            raise RuntimeError("FEDCORE_BUILD_CUDA=1 but the installed torch is a CPU-only build")
        _log("torch is a CPU-only build: building the C++ path only")
        use_cuda = False
    if use_cuda:
        cpp_extension.CUDA_HOME = cuda_home  # in case it was imported before we set the env
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if use_cuda else ""
    gen = _write_build_info(mode, archs)
    sources = [str(p.relative_to(ROOT)) for p in source_files()
               if p.suffix == ".cpp" and (use_cuda or not is_cuda_only(p))]
    cxx = ["-O3", "-fopenmp", "-Wno-psabi", "-include", str(gen / "build_info.h")]
    kwargs = dict(name=EXT_NAME, include_dirs=[str(CSRC), str(gen)],
                  extra_link_args=["-fopenmp"])
    if use_cuda:
        sources.append(str((CSRC / "kernels.cu").relative_to(ROOT)))
        cxx.append("-DFEDCORE_WITH_CUDA")
        ext = cpp_extension.CUDAExtension(
            sources=sources, extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            **kwargs)
        _log(f"building {EXT_NAME} with CUDA (CUDA_HOME={cuda_home}, archs={archs})")
    else:
        ext = cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": cxx},
                                         **kwargs)
        _log(f"building {EXT_NAME} C++ only (FEDCORE_BUILD_CUDA={mode}, toolkit: {cuda_home})")
    return [ext], {"build_ext": cpp_extension.BuildExtension}
