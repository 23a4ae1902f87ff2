"""docs/AUDIT.md is a walk-through that runs: every bash block, in order, in an empty directory
(two witnesses as processes, a checkpoint published under their policy, pinned trust, a bundle
and the whole log verified against it, an unpinned answer ending in exit 3)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "AUDIT.md").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_audit_walkthrough_runs_as_written(tmp_path):
    blocks = re.findall(r"```bash\n(.*?)```", DOC, re.S)
    assert len(blocks) >= 5
    script = "\n".join(blocks)
    ports = {"8891": str(free_port()), "8892": str(free_port())}
    for old, new in ports.items():
        script = script.replace(old, new)
    script = script.replace("--port 889$w", '--port "$(eval echo \\$PORT$w)"')
    env = dict(os.environ, PORT1=ports["8891"], PORT2=ports["8892"])
    env.pop("RELEDGER_DB", None)
    env.pop("RELEDGER_TRUST", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    full = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    proc = subprocess.run(["bash", "-c", full], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"AUDIT.md failed:\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "verify-bundle OK" in out and "verify OK" in out and "anchored:" in out
    assert "NOT ANCHORED" in out  # the last, unpinned answer says so
    note = (tmp_path / "checkpoint.txt").read_text()
    assert note.count("\u2014 witness1.example/w ") == 2 and note.count("\u2014 witness2.example/w ") == 2
    trust = json.loads((tmp_path / "audit.trust").read_text())
    assert trust["checkpoint"] and trust["policy"]  # pinned, and moved forward to the checkpoint verified
    assert trust["log_mldsa_vkey"] and note.count("\u2014 reledger.example/national ") == 2  # Ed25519, ML-DSA-44
    assert "verify-proof OK" in out and "no ML-DSA-44 signature" in out  # the stripped proof refused
