"""The build: compiled backend active in CI, CUDA code really inside, fresh, fallback works."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import cuda_ext
from cuda_ext import _backend, build

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CUDA_FORCED = os.environ.get("FEDCORE_BUILD_CUDA", "") == "1"
EXT_OFF = os.environ.get("FEDCORE_BUILD_EXT", "1") == "0"


@pytest.mark.skipif(not (IN_CI or CUDA_FORCED) or EXT_OFF,
                    reason="only enforced in CI (CI=true) or with FEDCORE_BUILD_CUDA=1")
def test_compiled_backend_is_active_in_ci():
    assert cuda_ext.BACKEND == "compiled", cuda_ext.FALLBACK_REASON
    if CUDA_FORCED or (build.build_mode() == "auto" and build.find_cuda_home()):
        assert cuda_ext.WITH_CUDA, "a CUDA toolkit is present but _C has no CUDA kernels"


def fatbin_archs(so: Path) -> set[int]:
    """SM versions of the cubins embedded in a shared object (fatbin entry headers)."""
    data, archs, pos = so.read_bytes(), set(), 0
    while (pos := data.find(struct.pack("<I", 0xBA55ED50), pos)) >= 0:
        _, hsize, fsize = struct.unpack_from("<HHQ", data, pos + 4)
        off, end = pos + hsize, pos + hsize + fsize
        while off + 32 <= end:
            kind, _, ehsize = struct.unpack_from("<HHI", data, off)
            size = struct.unpack_from("<Q", data, off + 8)[0]
            if kind == 2:  # ELF cubin
                archs.add(struct.unpack_from("<I", data, off + 28)[0])
            if ehsize == 0:
                break
            off += ehsize + size
        pos += 4
    return archs


@pytest.mark.skipif(not _backend.WITH_CUDA, reason="_C built without CUDA")
def test_module_contains_sm80_and_sm90_cubins():
    archs = fatbin_archs(Path(_backend._C.__file__))
    wanted = {int(float(a.split("+")[0]) * 10) for a in _backend._C.CUDA_ARCHS.split(";") if a}
    assert wanted and wanted <= archs, (wanted, archs)
    if _backend._C.CUDA_ARCHS == "8.0;9.0":
        assert {80, 90} <= archs


def dynamic_symbols(so: Path) -> set[str]:
    """Names in the ELF dynamic symbol table (.dynsym via .dynstr) of a shared object."""
    data = so.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names: set[str] = set()
    for _, sh_type, _, _, off, size, link, _, _, entsize in sections:
        if sh_type != 11:  # SHT_DYNSYM
            continue
        str_off = sections[link][4]
        for pos in range(off, off + size, entsize):
            name_off, = struct.unpack_from("<I", data, pos)
            end = data.index(b"\0", str_off + name_off)
            names.add(data[str_off + name_off:end].decode())
    return names


@pytest.mark.skipif(not _backend.WITH_CUDA, reason="_C built without CUDA")
def test_module_uses_unified_memory_and_stream_apis():
    """The CUDA build really calls the runtime for managed memory, prefetch and the pipeline,
    and binds the ops (a GPU is not needed to check the binary)."""
    syms = dynamic_symbols(Path(_backend._C.__file__))
    for name in ("cudaMallocManaged", "cudaMemPrefetchAsync", "cudaMemGetInfo", "cudaFree",
                 "cudaMemcpyAsync", "cudaStreamWaitEvent", "cudaEventRecord"):
        assert any(s == name or s.startswith(name + "@") or s.startswith(name + "_ptsz")
                   for s in syms), f"{name} not referenced by {_backend._C.__file__}"
    for fn in ("managed_empty_cuda", "prefetch_managed", "is_managed", "linear_host_cuda",
               "matmul_softmax_cuda"):
        assert callable(getattr(_backend._C, fn)), fn


@pytest.mark.skipif(_backend._C is None, reason="compiled backend not active")
def test_build_is_current():
    """A stale .so (sources changed since the build) fails in CI, is skipped elsewhere."""
    if _backend._C.SOURCE_HASH != build.source_hash():
        msg = "cuda_ext._C is older than cuda_ext/csrc: rebuild (pip install --no-build-isolation -e .)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60, cwd=ROOT)


def test_import_never_fails_without_the_module():
    code = ("import sys; sys.modules['cuda_ext._C'] = None\n"
            "import torch, cuda_ext\n"
            "assert cuda_ext.BACKEND == 'fallback' and '_C' in cuda_ext.FALLBACK_REASON\n"
            "x, w = torch.randn(9, 4), torch.randn(4, 3)\n"
            "torch.testing.assert_close(cuda_ext.matmul_softmax(x, w), torch.softmax(x @ w, -1))\n"
            "print('ok')")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and r.stderr.count("RuntimeWarning: cuda_ext: using the pure-torch") == 1


def test_fallback_switch_and_missing_module_in_process(monkeypatch):
    """Re-run the backend choice in-process (ops reads _backend at call time)."""
    import importlib

    import torch

    x, w = torch.randn(9, 4), torch.randn(4, 3)
    try:
        for setup in ("env", "missing"):
            with monkeypatch.context() as mp:
                if setup == "env":
                    mp.setenv("FEDCORE_CUDA_EXT_FALLBACK", "1")
                else:
                    mp.setitem(sys.modules, "cuda_ext._C", None)
                    mp.delattr(cuda_ext, "_C", raising=False)  # `from . import _C` looks here first
                with pytest.warns(RuntimeWarning, match="pure-torch fallback"):
                    importlib.reload(_backend)
                assert _backend.BACKEND == "fallback" and _backend._C is None and _backend.REASON
                torch.testing.assert_close(cuda_ext.matmul_softmax(x, w),
                                           torch.softmax(x @ w, -1))
    finally:
        importlib.reload(_backend)


def test_build_switches(monkeypatch):
    monkeypatch.setenv("FEDCORE_BUILD_EXT", "0")
    assert build.get_extensions() == ([], {})
    monkeypatch.delenv("FEDCORE_BUILD_EXT")
    monkeypatch.setenv("FEDCORE_BUILD_CUDA", "maybe")
    with pytest.raises(ValueError):
        build.get_extensions()
    monkeypatch.setenv("FEDCORE_BUILD_CUDA", "1")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(build, "find_cuda_home", lambda: None)
    with pytest.raises(RuntimeError, match="no CUDA toolkit"):
        build.get_extensions()


def test_find_cuda_home_follows_wrapper_script(tmp_path, monkeypatch):
    root = tmp_path / "cuda-13.0"
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "bin" / "nvcc").write_text("")
    (root / "include" / "cuda_runtime.h").write_text("")
    wrap = tmp_path / "wrap" / "bin"
    wrap.mkdir(parents=True)
    (wrap / "nvcc").write_text(f'#!/bin/sh\nexec {root}/bin/nvcc "$@"\n')
    (wrap / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrap))
    monkeypatch.setattr(build, "_is_toolkit",
                        lambda p: p != Path("/usr/local/cuda") and (p / "bin" / "nvcc").exists()
                        and (p / "include" / "cuda_runtime.h").exists())
    assert build.find_cuda_home() == str(root)
