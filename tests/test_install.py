"""The base install: ``pip install reledger`` (no extras) in a clean venv is a bundle's verifier.

It installs msgpack and cryptography and nothing else (no database driver, no web framework);
``reledger --help`` and ``reledger verify-bundle FILE`` run; a command that needs an extra exits
2 and says which extra to install. The wheel is built from this tree, the venv is new, and the
bundle is a real one, exported from a ledger here (with the dev install).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from helpers import new_ledger
from reledger.replay.export import export_bundle

ROOT = Path(__file__).resolve().parent.parent
M0 = "9111000000MINE0000"
# what the base install must not bring (each belongs to an extra)
EXTRAS_ONLY = ("eventsourcing", "fastapi", "uvicorn", "httpx", "rich", "psycopg", "starlette", "pydantic")


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def base_install(tmp_path_factory) -> Path:
    """A new venv with the wheel of this tree installed, without extras: its bin directory."""
    where = tmp_path_factory.mktemp("install")
    # the sources the wheel is made of, copied (the build writes nothing into the repository)
    src = where / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in conf["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(where / "dist"), str(src))
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((where / "dist").glob("reledger-*.whl"))
    assert len(wheels) == 1, wheels
    venv.create(where / "venv", with_pip=True)
    bin_dir = where / "venv" / "bin"
    installed = run(str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheels[0]))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return bin_dir


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A real bundle: a ledger with a registered mine and its entries, checkpointed, exported."""
    where = tmp_path_factory.mktemp("bundle")
    url = f"sqlite:///{where / 'ledger.db'}"
    led = new_ledger(url, seed=41)
    led.register(M0)
    for _ in range(3):
        led.add(M0)
    led.checkpoint()
    led.close()
    export_bundle(url, M0, where / "mine.bundle")
    return where / "mine.bundle"


def clean_env(tmp: Path) -> dict[str, str]:
    """No trace of the dev install: the venv's own site-packages only, run from elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RELEDGER_DB")}
    env["RELEDGER_DB"] = f"sqlite:///{tmp / 'absent.db'}"
    return env


@pytest.mark.slow
def test_the_base_install_has_only_the_verifiers_dependencies(base_install):
    listed = run(str(base_install / "python"), "-m", "pip", "list", "--format", "json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"reledger", "msgpack", "cryptography"} <= names
    assert not names & set(EXTRAS_ONLY), names & set(EXTRAS_ONLY)
    # and the package it installed is this tree's, under one top-level name
    where = run(str(base_install / "python"), "-c", "import reledger.ledger.bundle as b; print(b.__file__)",
                cwd="/")
    assert where.returncode == 0 and "site-packages/reledger/ledger/bundle.py" in where.stdout, where


@pytest.mark.slow
def test_the_wheel_carries_the_web_console(base_install, tmp_path):
    """The console's page, script and style are package data (docs/CONSOLE.md): no CDN, no checkout."""
    got = run(str(base_install / "python"), "-c", "from importlib.resources import files; "
              "d = files('reledger.commands') / 'console_static'; "
              "print(sorted(p.name for p in d.iterdir() if p.stat().st_size > 0))",
              cwd=tmp_path, env=clean_env(tmp_path))
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "['console.css', 'console.js', 'index.html']", got.stdout


@pytest.mark.slow
def test_the_base_install_verifies_a_bundle(base_install, bundle, tmp_path):
    env = clean_env(tmp_path)
    helped = run(str(base_install / "reledger"), "--help", env=env, cwd=tmp_path)
    assert helped.returncode == 0 and "verify-bundle" in helped.stdout, helped.stdout + helped.stderr

    from reledger.ledger.bundle import verify_bundle

    genesis = verify_bundle(bundle.read_bytes()).genesis  # the auditor's pin, known out of band
    ok = run(str(base_install / "reledger"), "verify-bundle", str(bundle), "--genesis", genesis, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verify-bundle OK" in ok.stdout and f"party {M0}" in ok.stdout and "[green]" not in ok.stdout
    js = run(str(base_install / "reledger"), "verify-bundle", "--json", str(bundle), env=env, cwd=tmp_path)
    assert js.returncode == 3 and json.loads(js.stdout)["ok"] is True, js.stdout + js.stderr  # valid, nothing pinned
    assert json.loads(js.stdout)["anchored"] is False
    # pinned trust runs on the base install too
    vkey = run(str(base_install / "reledger"), "trust", "init", "--trust", str(tmp_path / "t"), "--genesis", genesis,
               "--log-vkey", "not-a-vkey", env=env, cwd=tmp_path)
    assert vkey.returncode == 2 and "Traceback" not in vkey.stderr, vkey.stdout + vkey.stderr

    # a flipped byte in the bundle is a verification failure (1), with the reason, no traceback
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "bad.bundle").write_bytes(bytes(data))
    bad = run(str(base_install / "reledger"), "verify-bundle", str(tmp_path / "bad.bundle"), env=env, cwd=tmp_path)
    assert bad.returncode == 1 and "FAILED" in bad.stdout and "Traceback" not in bad.stderr, bad.stdout + bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command, extra", [
    (["init"], "server"),  # the event store: eventsourcing
    (["quota", "--year", "2024"], "server"),
    (["serve"], "server"),
    (["demo"], "server"),
])
def test_a_command_that_needs_an_extra_says_which(base_install, tmp_path, command, extra):
    env = clean_env(tmp_path)
    proc = run(str(base_install / "reledger"), *command, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"install reledger[{extra}]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.db")), "nothing may be written"
