"""docs/CATALOGUE.md, generated from the entry catalogue (:mod:`reledger.commands.catalogue`) and
the command API's rules (:mod:`reledger.commands.validate`): ``python -m
reledger.commands.catalogue_doc > docs/CATALOGUE.md`` (tests/test_catalogue.py keeps the file in
step)."""

from __future__ import annotations

import sys

from reledger.projections.reference import REFERENCE_DATA

from .catalogue import ERROR_CODES, SCHEMAS, Check, Field, ListOf, Struct
from .validate import AUTHORIZATION_DOC, WRITE_PATH_DOC, role_rule_text


def rows_of(prefix: str, f: Field, required: bool) -> list[str]:
    req = "yes" if required else "no"
    rows = [f"| `{prefix}` | {req} | {f.describe()} | {f.doc} |"]
    if isinstance(f, (Struct, ListOf)):
        for suffix, child in f.children():
            rows += rows_of(prefix + suffix, child, not child.optional)
    return rows


def checks_of(f: Field, prefix: str) -> list[tuple[str, Check]]:
    out: list[tuple[str, Check]] = []
    if isinstance(f, Struct):
        out += [(f"in `{prefix}`: " if prefix else "", c) for c in f.checks]
        for name, child in f.fields.items():
            out += checks_of(child, f"{prefix}.{name}" if prefix else name)
    elif isinstance(f, ListOf):
        out += checks_of(f.item, f"{prefix}[]")
    return out


def catalogue_markdown() -> str:
    """docs/CATALOGUE.md, generated from the schemas (a test keeps the file in step)."""
    out = ["# Entry catalogue", "",
           "Generated from `commands/catalogue.py` by `python -m reledger.commands.catalogue_doc > docs/CATALOGUE.md`;",
           "do not edit by hand (tests/test_catalogue.py checks that this file is in step).", "",
           "Every entry's `body` is a map with exactly the fields below. Quantities are decimal **text** in",
           "normal form (`\"12.5\"`: no exponent, no leading or trailing zeros, never a float), at most 3",
           "decimals for kg, kg REO and t REO, 4 for % and factors, 2 for CNY; negative values and values",
           "above the stated maximum (absurd) are refused. Times are RFC 3339 UTC in normal form. Binary",
           "is msgpack bin (base64 text in JSON). Nested fields are written `lines[].kg`.", "",
           "## Who may assert what", "",
           "Refused (403 `forbidden`) when no role the party holds, or has held, allows the type;",
           "accepted and flagged by projections when the party is outside its designation at the",
           "entry's business time (see \"Authorization\" below, and commands/validate.py).", "",
           "| type | may be asserted by |", "|---|---|"]
    for t in SCHEMAS:
        out.append(f"| {t} | {role_rule_text(t)} |")
    out += ["", "## Reference data", "", f"Version `{REFERENCE_DATA['version']}` ({REFERENCE_DATA['sources']}; "
            "kept in `projections/reference.py`, shared with the rule engine).", "",
            "REO factors (kg REO per kg metal): " + ", ".join(
                f"{el} {f}" + (f" ({REFERENCE_DATA['reo_oxides'][el]})" if el in REFERENCE_DATA["reo_oxides"] else "")
                for el, f in REFERENCE_DATA["reo_factors"].items()) + ".", "",
            "Recovery bands (minimum %, exclusive): concentrate to mixed RE "
            f"{REFERENCE_DATA['recovery_bands']['concentrate_to_mixed']['min_pct']}; mixed to separated "
            f"{REFERENCE_DATA['recovery_bands']['mixed_to_separated_rock']['min_pct']} (rock) / "
            f"{REFERENCE_DATA['recovery_bands']['mixed_to_separated_ionic']['min_pct']} (ionic); above "
            f"{REFERENCE_DATA['recovery_bands']['max_pct']} % of input REO means unrecorded feed.", "",
            "| product | class | element |", "|---|---|---|"]
    for code, p in REFERENCE_DATA["products"].items():
        out.append(f"| `{code}` | {p['class']} | {p['element'] or ''} |")
    for group, title in (("registry", "Registry"), ("quota", "Quota"), ("flow", "Material flow"),
                         ("reporting", "Reporting"), ("enforcement", "Enforcement")):
        out += ["", f"## {title}"]
        for s in SCHEMAS.values():
            if s.group != group:
                continue
            out += ["", f"### {s.type}", "", s.doc, "", f"Asserted by: {role_rule_text(s.type)}.", "",
                    "| field | required | type | meaning |", "|---|---|---|---|"]
            for name, f in s.body.fields.items():
                out += rows_of(name, f, not f.optional)
            refused = [f"{prefix}{c.doc}" for prefix, c in checks_of(s.body, "")]
            unique = [f"repeated {f.unique_what} in `{name}`" for name, f in s.body.fields.items()
                      if isinstance(f, ListOf) and f.unique is not None]
            if refused or unique:
                out += ["", "Also refused (400): " + "; ".join(refused + unique) + "."]
    out += ["", "## Authorization", "", AUTHORIZATION_DOC, "", "## Write path", "", WRITE_PATH_DOC]
    out += ["", "## Error codes", "", "| code | HTTP status | meaning |", "|---|---|---|"]
    for code, (status, meaning) in ERROR_CODES.items():
        out.append(f"| `{code}` | {status} | {meaning} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(catalogue_markdown())
