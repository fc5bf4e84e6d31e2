"""Security: hostile text through every user-supplied string that can reach SQL, no SQL built
from values, checkpoints hash-checked and never unpickled, the embedded server on a Unix socket
only, passwords masked, plugins from entry points only."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geoloc.config import Settings
from tests.conftest import REPO
from tests.reliability.conftest import FRAME_CENTRE, FRAME_PX, Base, Result, sample_view, snapshot

HOSTILE = [
    "'; DROP TABLE tiles; --",
    '"; DROP TABLE orthomosaics; --',
    "x' OR '1'='1",
    "%",
    "________",
    "abc\\'); DELETE FROM encoders; --",
    "Åbo 🛰 \u0000nul",
    "$$; TRUNCATE tiles; $$",
]


@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain JPEG view inside the ingested crop."""
    from PIL import Image

    p = tmp_path_factory.mktemp("sec-frame") / "frame.jpg"
    Image.fromarray(sample_view(*FRAME_CENTRE, FRAME_PX)).save(p, quality=92)
    return p


# ------------------------------------------------------------------------------ hostile text
def test_hostile_strings_through_every_user_text(
    clone: Callable[[], Settings], frame: Path, cli: Callable[..., Result], tmp_path: Path
) -> None:
    """Encoder names/specs, priors, presets, pipeline plugin names and file names: each one
    is refused with a one-line error (or answered), and no table or row is touched."""
    settings = clone()
    before = snapshot(settings)
    for s in HOSTILE:
        pipe = tmp_path / "p.toml"
        pipe.write_text(f"[verify]\nname = {json.dumps(s)}\n", encoding="utf-8")
        runs = [
            ("locate", str(frame), "--encoder", s),
            ("ingest", str(tmp_path / "none.tif"), "--encoder", s),
            ("index", "verify", "--encoder", s),
            ("index", "info", "--encoder", s),
            ("locate", str(frame), "--prior", s),
            ("locate", str(frame), "--prior", f"60.4,22.4,{s}"),
            ("locate", str(frame), "--preset", s),
            ("locate", str(frame), "--pipeline", str(pipe)),
            ("locate", str(tmp_path / f"{s.replace('/', '_')}.jpg")),
        ]
        for args in runs:
            res = cli(settings, *args)
            assert res.code in (1, 2), (args, res.out, res.err)
            assert "Traceback" not in res.err and "internal error" not in res.err, res.err
            assert "syntax error" not in res.err.lower(), (args, res.err)
    assert snapshot(settings) == before


def test_repository_lookups_with_hostile_values(base: Base) -> None:
    """The repository functions that take user strings: parameters, never SQL text."""
    from geoloc.errors import DatabaseError
    from geoloc.store import open_database
    from geoloc.store import repository as repo

    db = open_database(base.settings)
    try:
        for s in HOSTILE:
            for value in (s, "deadbeef" + s):
                try:
                    assert repo.find_encoder(db, value, name=s) is None
                except DatabaseError as exc:  # too short: a clear refusal
                    assert "\n" not in str(exc)
                except ValueError as exc:  # psycopg2 refuses NUL (argv cannot carry one)
                    assert "\x00" in s and "NUL" in str(exc)
            try:
                assert repo.find_orthomosaic(db, s, 1) is None
            except ValueError as exc:
                assert "\x00" in s and "NUL" in str(exc)
    finally:
        db.dispose()
    assert snapshot(base.settings)["tiles"] == base.tiles


def test_sha_prefix_is_not_a_like_pattern(base: Base) -> None:
    from geoloc.store import open_database
    from geoloc.store import repository as repo

    db = open_database(base.settings)
    try:  # '_' is a LIKE wildcard: it must not match any encoder (fixed in efc87fd)
        assert repo.find_encoder(db, "________") is None
    finally:
        db.dispose()


# ---------------------------------------------------------------------- no SQL from values
SQL_SINKS = {"text", "_text", "exec_driver_sql", "copy_expert", "execute", "executemany"}


class _SqlChecker(ast.NodeVisitor):
    """Flag SQL sinks whose SQL text is an f-string, ``%``/``.format`` formatting, or a
    concatenation involving anything but string constants and local names built only from
    string constants."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._assigns: list[dict[str, list[ast.expr]]] = [{}]
        self._in_wrapper = False

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        assigns: dict[str, list[ast.expr]] = {}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                for t in sub.targets:
                    if isinstance(t, ast.Name):
                        assigns.setdefault(t.id, []).append(sub.value)
            elif isinstance(sub, ast.AugAssign) and isinstance(sub.target, ast.Name):
                assigns.setdefault(sub.target.id, []).append(sub.value)
            elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                if sub.value is not None:
                    assigns.setdefault(sub.target.id, []).append(sub.value)
        self._assigns.append(assigns)
        wrapper = self._in_wrapper
        self._in_wrapper = node.name in SQL_SINKS
        self.generic_visit(node)
        self._in_wrapper = wrapper
        self._assigns.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def _static(self, e: ast.expr, depth: int = 0) -> bool:
        if isinstance(e, ast.Constant):
            return isinstance(e.value, str)
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            return self._static(e.left, depth) and self._static(e.right, depth)
        if isinstance(e, ast.Name) and depth < 5:
            values = self._assigns[-1].get(e.id)
            if not values:
                return False
            return all(self._static(v, depth + 1) for v in values)
        return False

    def visit_Call(self, node: ast.Call) -> None:
        if self._in_wrapper:
            return  # ``def _text(sql): return text(sql)``: its callers are checked
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in SQL_SINKS and node.args:
            arg = node.args[0]
            stringish = isinstance(arg, (ast.Constant, ast.JoinedStr, ast.BinOp)) or (
                isinstance(arg, ast.Call)
                and isinstance(arg.func, ast.Attribute)
                and arg.func.attr == "format"
            )
            if isinstance(arg, ast.Name) and name in {"text", "_text", "exec_driver_sql"}:
                stringish = True
            if stringish and not self._static(arg):
                self.problems.append(f"line {node.lineno}: {name}({ast.unparse(arg)[:80]})")
        self.generic_visit(node)


def sql_problems(source: str) -> list[str]:
    """SQL sinks of ``source`` whose SQL text is built from non-constant values."""
    checker = _SqlChecker()
    checker.visit(ast.parse(source))
    return checker.problems


def test_the_sql_checker_catches_formatted_sql() -> None:
    bad = (
        "def f(conn, name, n):\n"
        "    conn.execute(text(f\"SELECT * FROM tiles WHERE name = '{name}'\"))\n"
        "    conn.execute(text('SELECT %s' % name))\n"
        "    conn.execute(text('SELECT {}'.format(n)))\n"
        "    sql = 'SELECT * FROM t WHERE a = ' + name\n"
        "    conn.execute(_text(sql))\n"
        "    cur.copy_expert(f'COPY {name} FROM STDIN', buf)\n"
    )
    assert len(sql_problems(bad)) == 5
    good = (
        "def f(conn, enc):\n"
        "    sql = 'SELECT * FROM t'\n"
        "    if enc:\n"
        "        sql += ' WHERE e = :e'\n"
        "    conn.execute(_text(sql + ' ORDER BY id'), {'e': enc})\n"
    )
    assert sql_problems(good) == []


@pytest.mark.parametrize(
    "package", ["geoloc/store", "geoloc/ingest", "geoloc/localize", "geoloc/cli"]
)
def test_no_sql_is_built_from_values(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    problems = {
        str(p.relative_to(REPO)): found
        for p in files
        if (found := sql_problems(p.read_text(encoding="utf-8")))
    }
    assert problems == {}


# --------------------------------------------------------------------- no pickle, hash checks
def test_no_pickle_of_untrusted_data() -> None:
    """torch.load only with weights_only=True, np.load never with allow_pickle=True, no pickle."""
    problems = []
    for p in sorted([*(REPO / "geoloc").rglob("*.py"), *(REPO / "tiling").rglob("*.py")]):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{p.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for m in mods):
                    problems.append(f"{where}: imports pickle")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            base = ast.unparse(node.func.value)
            if node.func.attr == "load" and base == "torch":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if node.func.attr == "load" and base in ("np", "numpy"):
                v = kw.get("allow_pickle")
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    problems.append(f"{where}: np.load(allow_pickle=...)")
    assert problems == []


def test_tampered_checkpoint_is_a_one_line_error(
    base: Base, frame: Path, cli: Callable[..., Result], tmp_path: Path
) -> None:
    from geoloc.models.checkpoint import checkpoint_paths, save_checkpoint
    from geoloc.models.registry import load_encoder  # not the test's cached (optimised) one

    enc = load_encoder("sgmnet")
    ckpt = tmp_path / "ckpt" / "sgm"
    save_checkpoint(enc, ckpt)
    weights, meta = checkpoint_paths(ckpt)
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    for args in (("locate", str(frame)), ("ingest", str(base.raster), "--no-progress")):
        res = cli(base.settings, *args, "--checkpoint", str(ckpt))
        assert res.code == 1, res.err
        (line,) = res.err_lines
        assert line.startswith(f"geoloc: error: {weights}: ") and "SHA-256" in line, line
    # the JSON sidecar says another model than the weights: refused too
    m = json.loads(meta.read_text())
    m["weights_file_sha256"] = "0" * 64
    meta.write_text(json.dumps(m))
    res = cli(base.settings, "locate", str(frame), "--checkpoint", str(ckpt))
    assert res.code == 1 and "SHA-256" in res.err and "Traceback" not in res.err
    assert snapshot(base.settings)["tiles"] == base.tiles


# ----------------------------------------------------------------- server, URLs, plugins
def test_embedded_server_listens_on_a_unix_socket_only(pg_server: Any) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(pg_server.admin_url)
    host = url.query["host"]
    assert url.host is None and url.port is None and isinstance(host, str)
    assert host.startswith("/")
    engine = create_engine(pg_server.admin_url)
    try:
        with engine.connect() as conn:
            listen = conn.execute(text("SHOW listen_addresses")).scalar()
            sockets = conn.execute(text("SHOW unix_socket_directories")).scalar()
    finally:
        engine.dispose()
    assert listen == "", listen  # no TCP at all (pg_hba's host lines can never match)
    assert isinstance(sockets, str)
    assert all(s.strip().startswith(str(pg_server.home)) for s in sockets.split(","))


def test_urls_are_printed_masked(tmp_path: Path, cli: Callable[..., Result]) -> None:
    url = "postgresql+psycopg2://geoloc:Sup3r-s3cret@db.example:5432/geoloc"
    s = Settings(home=tmp_path / "h", database_url=url)
    res = cli(s, "db", "url")
    assert res.code == 0 and "Sup3r" not in res.out and "***" in res.out, res.out
    from geoloc.config import mask_url

    assert "Sup3r" not in mask_url(url)
    assert "Sup3r" not in mask_url("postgresql://geoloc:Sup3r-s3cret@[bad")  # unparsable


def test_plugins_come_from_entry_points_only(
    base: Base, frame: Path, cli: Callable[..., Result], tmp_path: Path
) -> None:
    """A module path or ``module:attr`` as a plugin name is never imported."""
    evil = tmp_path / "evil_plugin.py"
    marker = tmp_path / "imported"
    evil.write_text(f"open({str(marker)!r}, 'w').write('pwned')\nclass X:\n    pass\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        for spec in (str(evil), "evil_plugin:X", "evil_plugin", "os:system"):
            res = cli(base.settings, "locate", str(frame), "--encoder", spec)
            assert res.code == 1 and "Traceback" not in res.err, res.err
            pipe = tmp_path / "p.toml"
            pipe.write_text(f"[verify]\nname = {json.dumps(spec)}\n")
            res = cli(base.settings, "locate", str(frame), "--pipeline", str(pipe))
            assert res.code == 1 and "unknown verify plugin" in res.err, res.err
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()
    assert "evil_plugin" not in sys.modules
