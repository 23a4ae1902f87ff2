"""Replay a party's history: what a regulator does when a violation is suspected.

The replay is independent of the projection tables: it folds the log from scratch with a fresh
:class:`reledger.projections.model.Projector` (its rule state in a scratch file, projections/state.py), checks every signature of the party's entries with the
key that was valid when each was recorded, and keeps, after each of the party's entries, the
party's stock (by lot) and quota usage, and the findings the entry raised. Findings about the
party raised by other entries' arrival (a shipment overdue, a report missing) appear as their
own steps. Tests check that the state after any step equals the projections at that point.
"""

from __future__ import annotations

import base64
import bisect
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Iterator

from reledger.ledger import encoding
from reledger.ledger.encoding import EncodingError
from reledger.ledger.entry import EntryError, SignedEntry
from reledger.ledger.registry import Registry, RegistryError
from reledger.projections.model import Projector, kg_text, time_us
from reledger.projections.state import ScratchState
from reledger.projections.store import P
from reledger.storage.reader import LogReader

FAR = 2**62


@dataclass
class Step:
    index: int
    kind: str  # "entry" (one of the party's entries) or "finding" (raised by another entry)
    seq: int | None
    type: str | None
    occurred_at: str | None
    recorded_at: str
    entry_hash: str | None
    body: Any
    signature: str  # "valid (key …)", "INVALID: …", or "" for finding steps
    counterparty: str | None
    lots: list[str]
    stock: dict[str, dict[str, str]]  # lot -> {"product", "kg", "reo_kg"} after this step
    quota_used: dict[str, str]  # "YEAR CATEGORY" -> t REO used after this step
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "seq": self.seq, "type": self.type,
                "occurred_at": self.occurred_at, "recorded_at": self.recorded_at, "entry_hash": self.entry_hash,
                "body": self.body, "signature": self.signature, "counterparty": self.counterparty,
                "lots": self.lots, "stock": self.stock, "quota_used": self.quota_used, "findings": self.findings}


@dataclass
class Replay:
    party: str
    name: str | None
    size: int  # log size replayed (as of)
    steps: list[Step]
    first_by_rule: dict[str, dict[str, Any]]  # rule -> the first finding of that rule
    signatures_valid: int
    signatures_invalid: int
    credit: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"party": self.party, "name": self.name, "as_of_size": self.size,
                "steps": [s.to_dict() for s in self.steps], "first_by_rule": self.first_by_rule,
                "signatures": {"valid": self.signatures_valid, "invalid": self.signatures_invalid},
                "credit": self.credit}


def json_body(value: Any) -> Any:
    """An entry body as JSON: binary becomes base64 text."""
    if isinstance(value, bytes):
        return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: json_body(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_body(v) for v in value]
    return value


def _counterparty(party: str, chain: str, body: dict) -> str | None:
    for name in ("buyer", "seller", "enterprise", "holder", "party"):
        v = body.get(name)
        if isinstance(v, str) and v != party:
            return v
    return chain if chain != party else None


def _unreadable(rec, err: Exception, state: dict, quota: dict) -> "Step":
    """Replay's step for an entry the log holds but that cannot be read (tampered or deleted)."""
    return Step(rec.index, "entry", rec.seq, rec.type, None, rec.recorded_at, rec.entry_hash.hex(), None,
                f"INVALID: unreadable entry: {err}", None, [], state, quota, [])


def _signature(registry: Registry, signed: SignedEntry, rec) -> tuple[str, bool]:
    """What replay says of an entry's signature, by the key valid when the log recorded it:
    one definition for the replay from rows and the replay by fold."""
    try:
        pub = registry.key_for(signed, rec.index, rec.recorded_us)
    except RegistryError as err:
        return f"INVALID: {err}", False
    if signed.signature_valid(pub):
        return f"valid (key {signed.entry.key_id})", True
    return f"INVALID: not a signature by key {signed.entry.key_id}", False


def _kept(party: str, e, body: dict, occ: int, since_us, until_us, types, lot, counterparty) -> bool:
    """Whether an entry of the party passes replay's filters (business-time window, types, lot,
    counterparty): one definition for the replay from rows and the replay by fold."""
    if since_us is not None and occ < since_us or until_us is not None and occ > until_us:
        return False
    if types and e.type not in types:
        return False
    if lot and lot not in _lots(body):
        return False
    return not (counterparty and _counterparty(party, e.chain, body) != counterparty)


def _lots(body: dict) -> list[str]:
    out = []
    if isinstance(body.get("lot"), str):
        out.append(body["lot"])
    for key in ("lines", "inputs", "outputs"):
        for line in body.get(key, []) or []:
            if isinstance(line, dict) and isinstance(line.get("lot"), str):
                out.append(line["lot"])
    return out


def replay_party(url: str, party: str, *, as_of: int | None = None, since_us: int | None = None,
                 until_us: int | None = None, types: set[str] | None = None, lot: str | None = None,
                 counterparty: str | None = None, fold: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> Replay:
    """Replay the log up to ``as_of`` entries and return the party's history (filtered by
    business time window, entry types, lot and counterparty).

    When the projection tables cover the first ``as_of`` entries, the party's history is read
    from them (:func:`_replay_rows`: the party's own entries, and its findings, stock, quota and
    credit rows, each read through its index: time and memory follow the party's history, not
    the log); otherwise, or with ``fold``, the log is folded from the start (the reference the
    tests hold the rows' answer to)."""
    with LogReader(url) as reader:
        size = reader.queries.size(reader.cursor())[0]
        n = size if as_of is None else min(as_of, size)
        if not fold:
            r = _replay_rows(reader, url, party, n, since_us, until_us, types, lot, counterparty, progress)
            if r is not None:
                return r
        # the fold's rule state in a scratch file (bounded cache), not in memory: it would grow
        # with the log (projections/state.py)
        scratch = ScratchState()
        try:
            return _replay(reader, scratch, Projector(scratch.state), party, n, since_us, until_us, types, lot,
                           counterparty, progress)
        finally:
            scratch.close()


_REGISTRY_TYPES = ("KeyAuthorized", "KeyRevoked", "PartyDesignationChanged", "PartyRegistered")


def _replay_rows(reader: LogReader, url: str, party: str, n: int, since_us, until_us, types, lot, counterparty,
                 progress) -> Replay | None:
    """The party's history from the projection tables (None: they do not cover ``n`` entries,
    or there are none). The steps are those the fold gives (the tests compare them)."""
    import json

    from reledger.projections.store import NoProjections, ProjectionReader

    try:
        ps = ProjectionReader(url)
    except NoProjections:
        return None
    try:
        if ps.position() < n:
            return None

        def rows(sql: str, params: tuple) -> Iterator[tuple]:
            # the party's rows in log order (its index: the party's history, never the log)
            return iter(ps.execute(sql + " ORDER BY idx", params))

        cur = reader.cursor()
        entries = [r for r in reader.queries.records_of_chain(cur, party, 1, 2**62) if r.index < n]
        registry_records = reader.queries.records_of_types(cur, list(_REGISTRY_TYPES), 0, n)
        findings: dict[int, list[dict[str, Any]]] = {}
        first: dict[str, dict[str, Any]] = {}
        for idx, occ, rule, code, _p, message, evidence, params in rows(
                f"SELECT idx, occurred_us, rule, code, party, message, evidence, params FROM {P}findings "
                "WHERE party = ? AND idx < ? AND code <> 'RESOLVED'", (party, n)):
            f = {"rule": rule, "code": code, "party": party, "message": message, "index": int(idx),
                 "occurred_at": encoding.micros_to_time_text(int(occ)), "evidence": json.loads(evidence),
                 "params": json.loads(params)}
            findings.setdefault(int(idx), []).append(f)
            first.setdefault(rule, f)
        credit = [{"index": int(idx), "kind": kind, "article": article, "fine_cny": fine,
                   "next_year_cut_t": encoding.decimal_text(Decimal(int(cut)) / 1_000_000) if cut else "0",
                   "detail": detail}
                  for idx, kind, article, fine, cut, detail in ps.execute(
                      f"SELECT idx, kind, article, fine, cut_g, detail FROM {P}credit WHERE party = ? AND idx < ? "
                      "ORDER BY idx", (party, n))]
        name = None
        for rec in registry_records:
            if rec.type == "PartyRegistered" and rec.envelope is not None:
                try:
                    body = SignedEntry.parse(rec.envelope).entry.body
                except (EntryError, EncodingError):
                    continue
                if isinstance(body, dict) and body.get("party") == party:
                    name = body.get("name")
        stock_rows = rows(f"SELECT idx, lot, product, g, reo_g FROM {P}stock WHERE party = ? AND idx < ?", (party, n))
        used_rows = rows(f"SELECT idx, year, category, g FROM {P}quota WHERE party = ? AND kind = 'USED' AND idx < ?",
                         (party, n))
        stock: dict[str, list] = {}
        used: dict[str, int] = {}
        pending: dict[str, Any] = {"stock": next(stock_rows, None), "used": next(used_rows, None)}

        shown: dict[str, dict[str, str]] = {}  # lot -> its figures as shown (made again when they change)
        order: list[str] = []  # the lots, sorted

        def advance(upto: int) -> None:
            r = pending["stock"]
            while r is not None and int(r[0]) <= upto:
                s = stock.get(r[1])
                if s is None:
                    s = stock[r[1]] = [r[2], 0, 0]
                    bisect.insort(order, r[1])
                s[0] = s[0] or r[2]
                s[1] += int(r[3])
                s[2] += int(r[4])
                if s[1] or s[2]:
                    shown[r[1]] = {"product": s[0], "kg": kg_text(s[1]), "reo_kg": kg_text(s[2])}
                else:
                    shown.pop(r[1], None)
                r = next(stock_rows, None)
            pending["stock"] = r
            r = pending["used"]
            while r is not None and int(r[0]) <= upto:
                k = f"{int(r[1])} {r[2]}"
                used[k] = used.get(k, 0) + int(r[3])
                r = next(used_rows, None)
            pending["used"] = r

        def state_now() -> tuple[dict, dict]:
            return ({lt: shown[lt] for lt in order if lt in shown},
                    {k: encoding.decimal_text(Decimal(v) / 1_000_000) for k, v in sorted(used.items())})

        registry = Registry()
        reg_i = 0
        own = {r.index: r for r in entries}
        steps: list[Step] = []
        valid = invalid = 0
        for k, index in enumerate(sorted(set(own) | set(findings))):
            if progress and k % 200 == 0:
                progress(k, len(own) + len(findings))
            while reg_i < len(registry_records) and registry_records[reg_i].index < index:
                try:
                    registry.apply(SignedEntry.parse(registry_records[reg_i].envelope), registry_records[reg_i].index)
                except (EntryError, EncodingError, RegistryError, TypeError):
                    pass
                reg_i += 1
            advance(index)
            rec = own.get(index)
            mine = findings.get(index, [])
            if rec is None:  # another party's entry raised findings about this one
                other = reader.queries.records(reader.cursor(), index, index + 1)
                steps.append(Step(index, "finding", None, None, None, other[0].recorded_at if other else "",
                                  None, None, "", None, [], *state_now(), mine))
                continue
            try:
                if rec.envelope is None:
                    raise EntryError("the entry is missing from the events table")
                signed = SignedEntry.parse(rec.envelope)
            except (EntryError, EncodingError) as err:
                invalid += 1
                if not types or rec.type in types:
                    steps.append(_unreadable(rec, err, *state_now()))
                continue
            e = signed.entry
            if (e.chain, e.seq, signed.hash) != (rec.chain, rec.seq, rec.entry_hash):
                sig = (f"INVALID: the entry {e.chain}:{e.seq} is not the one the log recorded at index "
                       f"{rec.index} ({rec.chain}:{rec.seq}, hash {rec.entry_hash.hex()[:16]}…)")
                invalid += 1
                if e.chain != party:
                    if not types or rec.type in types:
                        steps.append(Step(rec.index, "entry", rec.seq, rec.type, None, rec.recorded_at,
                                          rec.entry_hash.hex(), None, sig, None, [], *state_now(), mine))
                    continue
            else:
                sig, ok = _signature(registry, signed, rec)
                valid, invalid = valid + ok, invalid + (not ok)
            body = e.body if isinstance(e.body, dict) else {}
            occ = time_us(e.occurred_at) or rec.recorded_us
            if not _kept(party, e, body, occ, since_us, until_us, types, lot, counterparty):
                continue
            steps.append(Step(rec.index, "entry", e.seq, e.type, e.occurred_at, rec.recorded_at, signed.hash.hex(),
                              json_body(body), sig, _counterparty(party, e.chain, body), _lots(body), *state_now(),
                              mine))
        return Replay(party, name, n, steps, first, valid, invalid, credit)
    finally:
        ps.close()


def _replay(reader, scratch, proj, party, n, since_us, until_us, types, lot, counterparty, progress) -> Replay:
    registry = Registry()
    stock: dict[str, list] = {}
    used: dict[str, int] = {}
    steps: list[Step] = []
    first: dict[str, dict[str, Any]] = {}
    valid = invalid = 0
    credit: list[dict[str, Any]] = []
    name = None

    def state_now() -> tuple[dict, dict]:
        return ({lt: {"product": v[0], "kg": kg_text(v[1]), "reo_kg": kg_text(v[2])}
                 for lt, v in sorted(stock.items()) if v[1] or v[2]},
                {k: encoding.decimal_text(Decimal(v) / 1_000_000) for k, v in sorted(used.items())})

    for rec in reader.iter_records(proj.position, n):
        if progress and rec.index % 2000 == 0:
            progress(rec.index, n)
        if rec.index % 5000 == 4999:
            scratch.flush()
        try:
            if rec.envelope is None:
                raise EntryError("the entry is missing from the events table")
            signed = SignedEntry.parse(rec.envelope)
        except (EntryError, EncodingError) as err:
            # a tampered (unreadable or deleted) entry: nothing to fold, but never hidden
            proj.position = rec.index + 1
            if rec.chain == party:
                invalid += 1
                if not types or rec.type in types:
                    steps.append(_unreadable(rec, err, *state_now()))
            continue
        e = signed.entry
        sig = ""
        if (e.chain, e.seq, signed.hash) != (rec.chain, rec.seq, rec.entry_hash) and party in (e.chain, rec.chain):
            # the stored entry is not the one the log recorded at this position (swapped or
            # rewritten rows): its signature proves nothing about this position
            sig, invalid = (f"INVALID: the entry {e.chain}:{e.seq} is not the one the log recorded at index "
                            f"{rec.index} ({rec.chain}:{rec.seq}, hash {rec.entry_hash.hex()[:16]}…)"), invalid + 1
        elif e.chain == party:
            sig, ok = _signature(registry, signed, rec)
            valid, invalid = valid + ok, invalid + (not ok)
        try:
            registry.apply(signed, rec.index)
        except RegistryError:
            pass
        d = proj.apply(rec.index, rec.recorded_us, signed)
        for (p, lt, product, g, reo) in d.stock:
            if p == party:
                s = stock.setdefault(lt, [product, 0, 0])
                s[0] = s[0] or product
                s[1] += g
                s[2] += reo
        for (year, p, cat, kind, g, grp, _ref) in d.quota:
            if p == party and kind == "USED":
                used[f"{year} {cat}"] = used.get(f"{year} {cat}", 0) + g
        for c in d.credit:
            if c[0] == party:
                credit.append({"index": rec.index, "kind": c[1], "article": c[2], "fine_cny": c[3],
                               "next_year_cut_t": encoding.decimal_text(Decimal(c[4]) / 1_000_000) if c[4] else "0",
                               "detail": c[5]})
        # a RESOLVED row marks an earlier finding cured (the projections show it on that finding)
        mine = [f.to_dict() for f in d.findings if f.party == party and f.code != "RESOLVED"]
        for f in mine:
            first.setdefault(f["rule"], f)
        if e.type == "PartyRegistered" and e.body.get("party") == party:
            name = e.body.get("name")
        if e.chain != party and rec.chain == party and sig:
            # the party's log position holds another chain's entry: shown as the party's step
            if not types or rec.type in types:
                steps.append(Step(rec.index, "entry", rec.seq, rec.type, None, rec.recorded_at,
                                  rec.entry_hash.hex(), None, sig, None, [], *state_now(), mine))
            continue
        if e.chain != party and not mine:
            continue
        body = e.body if isinstance(e.body, dict) else {}
        occ = time_us(e.occurred_at) or rec.recorded_us
        if e.chain == party:
            if not _kept(party, e, body, occ, since_us, until_us, types, lot, counterparty):
                continue
        steps.append(Step(
            rec.index, "entry" if e.chain == party else "finding",
            e.seq if e.chain == party else None, e.type if e.chain == party else None,
            e.occurred_at if e.chain == party else None, rec.recorded_at,
            signed.hash.hex() if e.chain == party else None,
            json_body(body) if e.chain == party else None, sig,
            _counterparty(party, e.chain, body) if e.chain == party else None,
            _lots(body) if e.chain == party else [],
            *state_now(), mine))
    return Replay(party, name, n, steps, first, valid, invalid, credit)


def grouped(text: Any) -> str:
    """A decimal quantity with thousands separators, its decimals kept ("1,325,500.25")."""
    import re

    m = re.fullmatch(r"(-?)(\d+)(\.\d+)?", str(text))
    if not m:
        return str(text)
    return f"{m.group(1)}{int(m.group(2)):,}{m.group(3) or ''}"


#: body fields that are quantities, and their units (one unit per kind: t REO for quota, kg for mass)
_UNITS = (("_t_reo", "t REO"), ("t_reo", "t REO"), ("reo_kg", "kg REO"), ("_kg", "kg"), ("kg", "kg"),
          ("_pct", "%"), ("fine_cny", "CNY"))


def _unit(name: str) -> str | None:
    for suffix, unit in _UNITS:
        if name == suffix or name.endswith(suffix):
            return unit
    return None


def _sum(lines: Any, key: str) -> Decimal | None:
    total = None
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, dict) and isinstance(line.get(key), str):
            try:
                total = (total or Decimal(0)) + Decimal(line[key])
            except ArithmeticError:
                pass
    return total


def says(type_: str | None, body: Any) -> str:
    """What an entry says, in one line for a person: its quantities with their units (thousands
    separators), its lots and parties; e.g. ``lot BO01-000001 BASTNAESITE_CONCENTRATE: dry_kg
    351,219.4 kg, reo_kg 180,000 kg REO, treo_pct 51.25 %``."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    for name in ("lot", "product", "transfer_id", "batch", "month", "holder", "enterprise", "buyer", "seller",
                 "party", "category", "year", "batch_no"):
        v = body.get(name)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            parts.append(f"{name.replace('_', ' ')} {v}")
        elif isinstance(v, dict) and {"year", "batch_no"} <= set(v):
            parts.append(f"{name} {v['year']}/{v['batch_no']}")
    for name, v in body.items():
        unit = _unit(name)
        if unit and isinstance(v, str):
            parts.append(f"{name} {grouped(v)} {unit}")
    for name in ("lines", "inputs", "outputs"):
        lines = body.get(name)
        if isinstance(lines, list) and lines:
            kg, reo = _sum(lines, "kg"), _sum(lines, "reo_kg")
            bit = f"{name} ({len(lines)} lot{'s' if len(lines) != 1 else ''})"
            if kg is not None:
                bit += f" {grouped(encoding.decimal_text(kg))} kg"
            if reo is not None:
                bit += f", {grouped(encoding.decimal_text(reo))} kg REO"
            parts.append(bit)
    return "; ".join(parts)


def iter_csv(r: Replay) -> Iterator[str]:
    """CSV lines, one a step: where it sits, what it says, its hash and signature, its findings."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "kind", "seq", "type", "occurred_at", "recorded_at", "counterparty", "says", "entry_hash",
                "signature", "findings"])
    for s in r.steps:
        w.writerow([s.index, s.kind, s.seq or "", s.type or "", s.occurred_at or "", s.recorded_at,
                    s.counterparty or "", says(s.type, s.body), s.entry_hash or "", s.signature,
                    " ".join(f["code"] for f in s.findings)])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.getvalue():
        yield buf.getvalue()


def iter_text(r: Replay) -> Iterator[str]:
    """Lines for the terminal, one block per step."""
    yield f"Replay of {r.party}" + (f" ({r.name})" if r.name else "") + f", log size {r.size}: {len(r.steps)} steps, " \
          f"signatures {r.signatures_valid} valid, {r.signatures_invalid} invalid"
    for s in r.steps:
        if s.kind == "entry":
            cp = f" with {s.counterparty}" if s.counterparty else ""
            yield f"\n#{s.index} seq {s.seq} {s.type}{cp}  occurred {s.occurred_at}  recorded {s.recorded_at}"
            said = says(s.type, s.body)
            if said:
                yield f"   says {said}"
            yield f"   hash {s.entry_hash}  signature {s.signature}"
            if s.lots:
                yield f"   lots {', '.join(s.lots[:6])}" + (" …" if len(s.lots) > 6 else "")
        else:
            yield f"\n#{s.index} (another party's entry, recorded {s.recorded_at})"
        held = [f"{lt} {grouped(v['kg'])} kg" for lt, v in list(s.stock.items())[:4]]
        if held:
            yield f"   stock after: {'; '.join(held)}" + (f" (+{len(s.stock) - 4} lots)" if len(s.stock) > 4 else "")
        if s.quota_used:
            yield "   quota used: " + ", ".join(f"{k} {grouped(v)} t REO" for k, v in s.quota_used.items())
        for f in s.findings:
            yield f"   FINDING {f['code']} ({f['rule']}): {f['message']}"
    if r.first_by_rule:
        yield "\nFirst entry that broke each rule:"
        for rule, f in r.first_by_rule.items():
            ev = f["evidence"][0] if f["evidence"] else {}
            yield f"   {rule}: log index {f['index']} ({ev.get('chain')}:{ev.get('seq')}) {f['code']}"
