"""The entry catalogue without a database: field types and limits, the genesis bodies, the JSON
Schema and the markdown generated from the same schemas, and the reference data."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from reledger.commands.catalogue import (ENTRY_TYPES, ERROR_CODES, REFERENCE_DATA, SCHEMAS, CommandError, Conflict,
                                Forbidden, InvalidCommand, Kg, Pct, TReo, UnknownReference, body_from_json,
                                body_to_json, catalogue_json_schema, check_body,
                                report_digest)
from reledger.commands.catalogue_doc import catalogue_markdown
from reledger.commands.validate import AUTHORITY_TYPES, AUTHORIZED_ROLES
from reledger.ledger.encoding import decimal_text
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey

ROOT = Path(__file__).resolve().parent.parent
T0 = "2024-01-01T00:00:00Z"

# DOMAIN.md "Entry catalogue" plus the enforcement-loop types of the brief
DOMAIN_TYPES = {
    "PartyRegistered", "PartyDesignationChanged", "KeyAuthorized", "KeyRevoked", "GroupMembershipChanged",
    "AnnualTotalApproved", "QuotaBatchIssued", "QuotaSubAllocated", "QuotaReduced", "MineralProductProduced",
    "ImportReceived", "SecondaryFeedReceived", "SeparationBatchRecorded", "MetalSmelted", "TransferShipped",
    "TransferReceived", "ExportDeclared", "StockCounted", "MonthlyFlowReportSubmitted", "QuotaExecutionReported",
    "InspectionRecorded", "ViolationFound", "PenaltyImposed", "CorrectionRecorded",
    "RuleParameterSet"}  # DOMAIN.md "The rules, precisely": parameters set by the regulator's entries


def test_catalogue_covers_domain():
    assert set(ENTRY_TYPES) == DOMAIN_TYPES
    assert set(AUTHORIZED_ROLES) == DOMAIN_TYPES
    assert AUTHORITY_TYPES <= DOMAIN_TYPES


def test_docs_catalogue_in_step():
    """docs/CATALOGUE.md is generated; regenerate with python -m reledger.commands.catalogue."""
    assert (ROOT / "docs" / "CATALOGUE.md").read_text(encoding="utf-8") == catalogue_markdown()
    md = catalogue_markdown()
    for t in SCHEMAS:
        assert f"### {t}" in md
    for code in ERROR_CODES:
        assert f"`{code}`" in md


def test_genesis_and_registration_bodies_accepted():
    """What ledger.genesis produces must pass the catalogue."""
    reg = ChainSigner(SigningKey.generate("MIIT"))
    for e in genesis_entries(reg, SigningKey.generate("MIIT", "checkpoint"), name="MIIT", origin="x.example/log",
                             at=T0):
        check_body(e.entry.type, e.entry.body)
    k = SigningKey.generate("91150200MA0N8XY12K")
    check_body("KeyAuthorized", key_authorized_body(k, T0, name="terminal 2", valid_until="2031-01-01T00:00:00Z"))
    check_body("PartyRegistered", {"party": "91150200MA0N8XY12K", "name": "Bayan Obo East Mine", "roles": ["MINE"],
                                   "province": "Inner Mongolia", "county": "Baiyun", "group": "CNRE",
                                   "licence": "C1500002009", "capacity_t_reo": "12000", "valid_from": T0,
                                   "valid_until": "2031-01-01T00:00:00Z"})
    no_purpose = key_authorized_body(k, T0)
    del no_purpose["purpose"]  # FORMAT.md 4.1: absent means "entries"
    check_body("KeyAuthorized", no_purpose)
    with pytest.raises(CommandError) as ei:
        check_body("KeyAuthorized", key_authorized_body(k, T0, valid_until=T0))
    assert (ei.value.code, ei.value.field) == ("inconsistent", "body.valid_until")


def test_error_hierarchy():
    for code, (status, meaning) in ERROR_CODES.items():
        e = CommandError.make(code, f"x: {meaning}", field="x")
        assert isinstance(e, CommandError) and isinstance(e, ValueError) and e.status == status
        assert isinstance(e, {400: InvalidCommand, 403: Forbidden, 404: UnknownReference, 409: Conflict}[status])
        assert e.to_dict()["code"] == code and str(e) == f"x: {meaning}"


# --- field types ------------------------------------------------------------------------------

@pytest.mark.parametrize("value,code,text", [
    ("12.5", None, None), ("0.001", None, None), ("1000000000", None, None),
    ("1000000000.001", "out_of_range", "absurd"), ("-0.5", "out_of_range", "negative"),
    ("0", "out_of_range", "more than 0"), ("12.50", "bad_value", "normal form"), ("1e3", "bad_value", "normal form"),
    (" 1", "bad_value", "normal form"), ("1\n", "bad_value", "normal form"), ("-0", "bad_value", "normal form"), ("1.0001", "bad_value", "more than 3 decimals"),
    (12.5, "wrong_type", "floats are not allowed"), (12, "wrong_type", "decimal text"),
    (b"12", "wrong_type", "not binary"), (None, "wrong_type", "not nil"),
])
def test_kg(value, code, text):
    f = Kg()
    if code is None:
        assert f.check(value, "body.kg") == Decimal(value)
        return
    with pytest.raises(CommandError) as ei:
        f.check(value, "body.kg")
    assert (ei.value.code, ei.value.field) == (code, "body.kg") and text in str(ei.value)


@pytest.mark.parametrize("value", ["2024-01-01T00:00:00.5Z\n", "2024-01-01T00:00:00Z\n", "2024-01-01T00:00:00+08:00",
                                   "2024-02-30T00:00:00Z", "2024-01-01T00:00:00.50Z"])
def test_time_refused(value):
    from reledger.commands.catalogue import Time

    with pytest.raises(CommandError) as ei:
        Time().check(value, "body.t")
    assert (ei.value.code, ei.value.field) == ("bad_value", "body.t")


def test_text_refuses_trailing_newline_and_control_characters():
    from reledger.commands.catalogue import Ident, PartyId

    for f, v in ((PartyId(), "MIIT\n"), (Ident(), "L-1\n"), (PartyId(), "MI\x00IT")):
        with pytest.raises(CommandError) as ei:
            f.check(v, "x")
        assert ei.value.code == "bad_value"


def test_percent_and_tonnes():
    assert Pct().check("99.9999", "p") == Decimal("99.9999")
    for bad in ("100.0001", "99.99999", "-1"):
        with pytest.raises(CommandError):
            Pct().check(bad, "p")
    assert TReo().check("254000", "t") == 254000
    with pytest.raises(CommandError) as ei:
        TReo().check("10000000.001", "t")
    assert ei.value.code == "out_of_range"


@given(st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False, allow_infinity=False))
def test_every_normal_form_kg_in_range_is_accepted(d):
    text = decimal_text(d)
    if Decimal(text) == 0:
        return
    assert Kg().check(text, "k") == Decimal(text)


@given(st.one_of(st.text(max_size=20), st.floats(), st.integers(), st.binary(max_size=8), st.none(), st.booleans()))
def test_kg_never_raises_anything_else(value):
    try:
        Kg().check(value, "k")
    except CommandError as e:
        assert e.field == "k" and e.status == 400


def test_struct_missing_and_extra_fields_and_nesting():
    body = {"transfer_id": "T-1", "buyer": "SEP01", "vat_invoice_no": "1", "shipped_at": T0,
            "lines": [{"lot": "L1", "product": "Nd2O3", "kg": "1", "reo_kg": "0.9", "grade": "A"}]}
    with pytest.raises(CommandError) as ei:
        check_body("TransferShipped", body)
    assert (ei.value.code, ei.value.field) == ("unknown_field", "body.lines[0].grade")
    del body["lines"][0]["grade"], body["shipped_at"], body["buyer"]
    with pytest.raises(CommandError) as ei:
        check_body("TransferShipped", body)
    assert (ei.value.code, ei.value.field) == ("missing_field", "body.buyer")
    assert "buyer, shipped_at" in str(ei.value)
    with pytest.raises(CommandError) as ei:
        check_body("TransferShipped", ["not", "a", "map"])
    assert (ei.value.code, ei.value.field) == ("wrong_type", "body")
    with pytest.raises(CommandError) as ei:
        check_body("NoSuchType", {})
    assert (ei.value.code, ei.value.field, ei.value.status) == ("unknown_type", "type", 400)


# --- JSON Schema ---------------------------------------------------------------------------------

def _validate(schema: dict, value, path="$"):
    """A validator of the JSON Schema subset the catalogue emits (keeps the schema honest
    without a dependency): returns a list of problems."""
    problems = []
    t = schema.get("type")
    kinds = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict}
    if t and not (isinstance(value, kinds[t]) and not (t == "integer" and isinstance(value, bool))):
        return [f"{path}: not {t}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: not in enum")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{path}: pattern")
    if "not" in schema and "const" in schema["not"] and value == schema["not"]["const"]:
        problems.append(f"{path}: const")
    for k, op in (("minLength", lambda a, b: len(a) >= b), ("maxLength", lambda a, b: len(a) <= b),
                  ("minimum", lambda a, b: a >= b), ("maximum", lambda a, b: a <= b),
                  ("minItems", lambda a, b: len(a) >= b), ("maxItems", lambda a, b: len(a) <= b),
                  ("minProperties", lambda a, b: len(a) >= b)):
        if k in schema and not op(value, schema[k]):
            problems.append(f"{path}: {k}")
    if t == "array":
        for i, v in enumerate(value):
            problems += _validate(schema["items"], v, f"{path}[{i}]")
    if t == "object":
        props = schema.get("properties", {})
        for r in schema.get("required", ()):
            if r not in value:
                problems.append(f"{path}.{r}: required")
        for k, v in value.items():
            if k in props:
                problems += _validate(props[k], v, f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}.{k}: additional")
            elif isinstance(schema.get("additionalProperties"), dict):
                if "propertyNames" in schema and k not in schema["propertyNames"]["enum"]:
                    problems.append(f"{path}.{k}: name")
                problems += _validate(schema["additionalProperties"], v, f"{path}.{k}")
    return problems


def test_json_schema_shape():
    js = catalogue_json_schema()
    assert set(js["$defs"]) == set(SCHEMAS)
    for t, s in js["$defs"].items():
        assert s["type"] == "object" and s["additionalProperties"] is False and s["title"] == t
        assert set(s["properties"]) == set(SCHEMAS[t].body.fields)
        assert set(s["required"]) == {k for k, f in SCHEMAS[t].body.fields.items() if not f.optional}
    ship = js["$defs"]["TransferShipped"]["properties"]
    assert ship["lines"]["items"]["properties"]["kg"]["x-unit"] == "kg"
    digest = js["$defs"]["MonthlyFlowReportSubmitted"]["properties"]["digest"]
    assert digest["contentEncoding"] == "base64" and digest["x-bytes"] == 32


def test_valid_bodies_satisfy_json_schema_and_round_trip(sqlite_url):
    """Every type's valid example, in its JSON form, satisfies the JSON Schema; JSON <-> msgpack
    form round-trips; and the catalogue accepts the round-tripped body."""
    from test_api import World, example, run_scenario

    w = World(sqlite_url)
    try:
        run_scenario(w)
        js = catalogue_json_schema()["$defs"]
        for t in SCHEMAS:
            party = {"QuotaSubAllocated": "CREG", "MineralProductProduced": "MINE01",
                     "SecondaryFeedReceived": "RECY01", "MetalSmelted": "SMELT01",
                     "ExportDeclared": "EXPO01"}.get(t, "MIIT" if t in AUTHORITY_TYPES else "SEP01")
            body = example(w, t, party)
            as_json = body_to_json(t, body)
            assert _validate(js[t], as_json) == [], t
            back = body_from_json(t, as_json)
            assert back == body
            check_body(t, back)
        # a refused body is refused by the JSON Schema too where the schema can say it
        bad = body_to_json("MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"),
                                                      "wet_kg": "12.50"})
        assert _validate(js["MineralProductProduced"], bad) == ["$.wet_kg: pattern"]
    finally:
        w.close()


# --- reference data ---------------------------------------------------------------------------

def test_reference_data():
    assert REFERENCE_DATA["version"] == "2024.1"
    factors = REFERENCE_DATA["reo_factors"]
    assert factors["Nd"] == "1.1664" and factors["Ce"] == "1.2284" and factors["Sc"] == "1.5338"
    assert all(decimal_text(v) == v and 1 < Decimal(v) < 2 for v in factors.values())
    for code, p in REFERENCE_DATA["products"].items():
        assert p["class"] in ("MINERAL", "SEPARATED", "METAL", "ALLOY", "MAGNET", "SCRAP")
        if p["element"] is not None:
            assert p["element"] in factors, code
    bands = REFERENCE_DATA["recovery_bands"]
    assert bands["mixed_to_separated_rock"]["min_pct"] == "96" and bands["mixed_to_separated_ionic"]["min_pct"] == "94"


def test_report_digest():
    import hashlib

    hs = [bytes([i]) * 32 for i in range(3)]
    assert report_digest(hs) == hashlib.sha256(b"".join(hs)).digest()
    assert report_digest([]) == hashlib.sha256(b"").digest()
