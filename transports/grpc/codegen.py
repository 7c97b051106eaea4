"""Regenerate the gRPC modules from proto/fedcore.proto: ``python -m transports.grpc.codegen``.

grpc_tools emits ``import fedcore_pb2`` in the service module, an absolute import that only works
when the output folder is on sys.path. The one documented post-step below rewrites it to a
relative import so the modules live inside the ``transports.grpc`` package. The output is
deterministic, so ``--check`` (and a test) can verify the committed modules match the .proto.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
PROTO_DIR = REPO_ROOT / "proto"
PROTO_FILE = PROTO_DIR / "fedcore.proto"
GENERATED = ("fedcore_pb2.py", "fedcore_pb2.pyi", "fedcore_pb2_grpc.py")

_ABSOLUTE_IMPORT = re.compile(r"^import fedcore_pb2 as (\w+)$", re.MULTILINE)


def _fix_imports(text: str) -> str:
    """Post-step: make the service module import its messages relative to its own package."""
    return _ABSOLUTE_IMPORT.sub(r"from . import fedcore_pb2 as \1", text)


def generate(out_dir: Path = PACKAGE_DIR, proto_file: Path = PROTO_FILE) -> list[Path]:
    """Run protoc (bundled with grpcio-tools) on ``proto_file`` into ``out_dir``; return the files."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    well_known = str(resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_file.parent}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto_file),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto_file}")
    paths = [out_dir / name for name in GENERATED]
    for path in paths:
        path.write_text(_fix_imports(path.read_text()))
    return paths


def stale_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Names of committed generated modules that differ from what the .proto produces now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            p.name
            for p in fresh
            if not (package_dir / p.name).is_file() or (package_dir / p.name).read_text() != p.read_text()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the committed modules are up to date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_modules()
        if stale:
            print(f"out of date: {', '.join(stale)}; run python -m transports.grpc.codegen", file=sys.stderr)
            return 1
        print("generated gRPC modules are up to date")
        return 0
    for path in generate():
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
