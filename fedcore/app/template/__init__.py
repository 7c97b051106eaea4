"""``fedcore new NAME``: a small runnable project written from the templates in this folder."""
from __future__ import annotations

import keyword
from pathlib import Path
from string import Template

from fedcore.app.errors_cli import CliFailure

HERE = Path(__file__).resolve().parent
# template file -> where it goes in the project ($name is the package)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "server.toml.tmpl": "server.toml",
    "client_app.py.tmpl": "$name/client_app.py",
    "package_init.py.tmpl": "$name/__init__.py",
}


def write_project(name: str, root: Path) -> Path:
    """Write the project under ``root`` (which must not exist or be empty); returns ``root``."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise CliFailure(f"{name!r} is not a valid package name", "use letters, digits and _, e.g. my_fl")
    if root.exists() and any(root.iterdir()):
        raise CliFailure(f"{root} already exists and is not empty", "choose another NAME or --dir")
    for source, target in FILES.items():
        text = Template((HERE / source).read_text()).substitute(name=name)
        path = root / Template(target).substitute(name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
