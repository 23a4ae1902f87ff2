"""README's walk-through runs as written (extracted from README.md, so the docs cannot rot).

Every ```bash block after "## Walk-through" runs, in order, in one shell, in a fresh directory
after `reledger demo`. The PostgreSQL block runs against RELEDGER_TEST_PG in a schema of its
own (dropped afterwards); the HTTP port is replaced by a free one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import PG_URL, drop_schema, require_pg

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks() -> list[str]:
    walk = README.split("## Walk-through", 1)[1]
    return re.findall(r"```bash\n(.*?)```", walk, re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_starts_with_the_two_commands():
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert first[0].endswith("reledger demo") and "pip install -e '.[dev]'" in first[0]
    test_command = first[1].split("&&")[-1].strip()
    assert test_command.startswith("python -m pytest") and "-n auto" in test_command  # in parallel
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci  # CI runs exactly the README's test command


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path):
    require_pg()
    schema = "readme_" + uuid.uuid4().hex[:10]
    pg = PG_URL + ("&" if "?" in PG_URL else "?") + f"schema={schema}"
    port = str(free_port())
    script = ["set -euo pipefail", "reledger demo > demo.txt"]
    for b in blocks():
        b = b.replace("8765", port)
        b = b.replace('"postgresql://postgres@127.0.0.1:5432/test?schema=reledger_demo"', f'"{pg}"')
        script.append(b)
    env = dict(os.environ)
    env.pop("RELEDGER_DB", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT)
    try:
        proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
    finally:
        drop_schema(schema)
    assert proc.returncode == 0, f"README walk-through failed:\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    out = proc.stdout
    assert "recorded 9115020011BAYANOBO" in out
    assert "refused, as it should be" in out
    assert "verify-bundle OK" in out or "verify-bundle" in out
    assert (tmp_path / "reledger-demo" / "ganzhou.html").exists()
    assert (tmp_path / "reledger-demo" / "ganzhou.bundle").exists()


def test_docs_cite_only_documents_in_the_repository():
    """Every *.md that README.md and docs/*.md name is a file of the repository (at the root or
    in docs/): no citation of a spec that a reader of the repository cannot open."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for doc in docs:
        for name in set(re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b", doc.read_text())):
            if not any((base / name).exists() for base in (ROOT, ROOT / "docs", doc.parent)):
                missing.append(f"{doc.name} cites {name}")
    assert not missing, missing
    assert len(docs) > 3
