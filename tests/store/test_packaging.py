"""The wheel carries everything an installed geoloc needs: the Alembic scripts and the weights."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _declared_packages() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["tool"]["setuptools"]["packages"])


def test_every_source_package_is_declared() -> None:
    """``packages`` is an explicit list (for the migrations mapping): a new subpackage must be
    added to it or the wheel would silently lack it."""
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("geoloc", "tiling")
        for p in (REPO / top).rglob("__init__.py")
    }
    declared = set(_declared_packages())
    assert on_disk <= declared, sorted(on_disk - declared)


@pytest.mark.slow
def test_installed_wheel_finds_its_migrations(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels), str(REPO)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (whl,) = wheels.glob("geoloc-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert {
        "geoloc/_migrations/env.py",
        "geoloc/_migrations/script.py.mako",
        "geoloc/weights/sgmnet.safetensors",
        "tiling/__init__.py",
    } <= names
    assert any(n.startswith("geoloc/_migrations/versions/0001_") for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        + [str(whl)],
        check=True,
        capture_output=True,
    )
    # the installed copy, not the checkout: run from elsewhere with only the target on the path
    code = (
        "import geoloc, geoloc.store.database as d;"
        "print(geoloc.__file__); print(d.migrations_dir()); print(d.head_revision())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == str(target / "geoloc" / "_migrations")
    expected = subprocess.run(
        [sys.executable, "-c", "import geoloc.store.database as d; print(d.head_revision())"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.strip()
    assert out[2] == expected
