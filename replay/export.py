"""Export a party's evidence bundle (the format and its offline check are in ledger/bundle.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reledger.ledger import heads as chain_heads
from reledger.ledger.bundle import checkpoint_of, encode_bundle
from reledger.ledger.registry import REGISTRY_TYPES
from reledger.storage.reader import open_ledger_readonly
from reledger.storage.verify import signed_checkpoints


class ExportError(ValueError):
    pass


def export_bundle(url: str, party: str, out: str | Path) -> dict[str, Any]:
    """Write the party's bundle against the latest stored checkpoint; returns a summary."""
    data, summary = build_bundle(url, party)
    Path(out).write_bytes(data)
    return {"file": str(out), **summary}


def build_bundle(url: str, party: str) -> tuple[bytes, dict[str, Any]]:
    """The party's bundle (bytes) against the latest stored checkpoint, and a summary."""
    with open_ledger_readonly(url) as store:
        signed = signed_checkpoints(store)  # judged by their notes: a junk or altered row is no checkpoint
        if not signed or signed[-1][0] == 0:
            raise ExportError("no checkpoint yet: run `reledger checkpoint` first")
        size, _root, note = signed[-1]
        chain = [r for r in store.chain_records(party) if r.index < size]
        if not chain:
            raise ExportError(f"party {party} has no entry in the checkpointed log (size {size})")
        registry = store.queries.records_of_types(store.cursor(), sorted(REGISTRY_TYPES), 0, size)
        records = sorted({r.index: r for r in chain + registry}.values(), key=lambda r: r.index)
        entries = [{"index": r.index, "recorded_at": r.recorded_at, "envelope": r.envelope,
                    "proof": store.inclusion_proof(r.index, size)} for r in records]
        consistency = [{"note": n, "proof": store.consistency_proof(s, size) if s else []}
                       for s, _, n in signed if s < size]
        after = store.queries.chain_count(store.cursor(), party, chain[-1].seq + 1)  # counted, not loaded
        heads = None
        if chain_heads.of_extensions(checkpoint_of(note).extensions) is not None:
            position, count, proof = chain_heads.proof(store.queries.chain_heads(store.cursor(), size), party)
            heads = {"position": position, "count": count, "proof": proof}
    data = encode_bundle(party, note, entries, consistency, heads)
    return data, {"party": party, "checkpoint_size": size, "entries": len(entries),
                  "chain_length": len(chain), "registry_entries": len(registry),
                  "earlier_checkpoints": len(consistency), "after_checkpoint": after,
                  "chain_end_proven": heads is not None, "bytes": len(data)}
