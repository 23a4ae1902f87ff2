"""Authority: which role may assert which entry type (DOMAIN.md "Authority"), the one definition.

Pure data and two small functions; the rule that applies them is ``rules.authorized``. The
command API refuses an entry its chain's role may not assert (``forbidden``); ``reledger
verify`` (the readable verifier, the fast verifier over a database and the bundle verifier)
reports one found in a log (problem ``authority``, written below the API); and the projections
count it nowhere (finding ``UNAUTHORIZED_ENTRY``). All of them decide by :func:`roles_for` and
:data:`AUTHORIZED_ROLES` below, and by nothing else.

Which roles count, for the entry at log index i recorded at time T of chain C:

* for the regulator's types (:data:`REGULATOR_TYPES`): C's *current* roles (its latest
  designation recorded at an index < i), and only while the designation in force at T (the one
  with the latest ``valid_from`` <= T, a later entry winning a tie, and T before its
  ``valid_until``) holds them: a regulator whose designation ended or has not begun asserts none
  of them;
* for every other type: every role C has been designated with at an index < i, whenever (so
  that a late entry about a period when it was designated is recorded; designation at the
  entry's business time is the projections' rule, NOT_DESIGNATED);
* the root regulator (the chain of the genesis) holds REGULATOR before any designation of its
  own, and always for the other types.

A type not in the table (not in the catalogue) is not judged here.

A designation is the plain tuple ``(index, since_us, roles, until_us)``: the log index of the
PartyRegistered / PartyDesignationChanged that recorded it, its ``valid_from`` (microseconds;
PartyDesignationChanged without one keeps the previous), its roles (frozenset; without
``roles`` the previous) and its ``valid_until`` (None: no end; without the field the previous).
"""

from __future__ import annotations

from typing import Any, Sequence

from . import encoding

REGULATOR = "REGULATOR"
ENTERPRISE_ROLES = ("MINE", "SEPARATION", "SMELTER", "RECYCLER", "EXPORTER", "MAGNET")
_ENT = frozenset(ENTERPRISE_ROLES)
_REG = frozenset({REGULATOR})

#: the regulator's types: asserted by a party holding REGULATOR now (its current designation)
REGULATOR_TYPES = frozenset({
    "PartyRegistered", "PartyDesignationChanged", "KeyAuthorized", "KeyRevoked", "GroupMembershipChanged",
    "AnnualTotalApproved", "QuotaBatchIssued", "QuotaReduced", "InspectionRecorded", "ViolationFound",
    "PenaltyImposed", "RuleParameterSet"})

#: entry type -> the roles that may assert it (one of them suffices)
AUTHORIZED_ROLES: dict[str, frozenset[str]] = {
    **{t: _REG for t in REGULATOR_TYPES},
    "QuotaSubAllocated": frozenset({"GROUP"}),
    "MineralProductProduced": frozenset({"MINE"}),
    "SeparationBatchRecorded": frozenset({"SEPARATION"}),
    "MetalSmelted": frozenset({"SMELTER"}),
    "SecondaryFeedReceived": frozenset({"RECYCLER"}),
    "ExportDeclared": frozenset({"EXPORTER"}),
    "ImportReceived": _ENT,
    "TransferShipped": _ENT,
    "TransferReceived": _ENT,
    "StockCounted": _ENT,
    "MonthlyFlowReportSubmitted": _ENT,
    "QuotaExecutionReported": _ENT,
    "CorrectionRecorded": _ENT | {"GROUP", REGULATOR},
}

DESIGNATION_TYPES = ("PartyRegistered", "PartyDesignationChanged")

Designation = tuple  # (index, since_us, roles: frozenset, until_us | None)


def _us(v: Any) -> int | None:
    try:
        return encoding.time_to_micros(encoding.parse_time(v))
    except (encoding.EncodingError, TypeError, ValueError, OverflowError):
        return None


def designation(type_: str, body: Any, index: int, previous: Designation | None,
                root: bool = False) -> Designation | None:
    """The designation a PartyRegistered / PartyDesignationChanged body at log ``index`` records
    (``previous``: the party's latest, None if it has none); None for any other type."""
    if type_ not in DESIGNATION_TYPES or not isinstance(body, dict):
        return None
    roles_in = body.get("roles")
    roles = (frozenset(r for r in roles_in if isinstance(r, str)) if isinstance(roles_in, list) else None)
    if type_ == "PartyRegistered" or previous is None:
        prev_since, prev_roles, prev_until = 0, (_REG if root else frozenset()), None
    else:
        prev_since, prev_roles, prev_until = previous[1], previous[2], previous[3]
    since = _us(body.get("valid_from"))
    if type_ == "PartyRegistered":
        return (index, since if since is not None else 0, roles or frozenset(), _us(body.get("valid_until")))
    return (index, since if since is not None else prev_since, roles if roles is not None else prev_roles,
            _us(body.get("valid_until")) if "valid_until" in body else prev_until)


def roles_for(type_: str, designations: Sequence[Designation], index: int, recorded_us: int,
              root: bool = False) -> frozenset[str]:
    """The roles of a chain that count for asserting ``type_`` at log ``index``, recorded at
    ``recorded_us`` (see the module docstring); ``designations`` in log order."""
    known = [d for d in designations if d[0] < index]
    if type_ in REGULATOR_TYPES:
        if not known:
            return _REG if root else frozenset()
        in_force = None
        for d in known:
            if d[1] <= recorded_us and (in_force is None or d[1] >= in_force[1]):
                in_force = d
        if in_force is None or (in_force[3] is not None and recorded_us >= in_force[3]):
            return frozenset()
        return known[-1][2] & in_force[2]
    out: frozenset[str] = _REG if root else frozenset()
    for d in known:
        out |= d[2]
    return out


def may_assert(type_: str, roles: frozenset[str]) -> bool:
    """Whether ``roles`` (as :func:`roles_for` counts them) may assert ``type_``; a type the
    table does not know is not judged (True)."""
    allowed = AUTHORIZED_ROLES.get(type_)
    return allowed is None or bool(roles & allowed)


def who_may(type_: str) -> str:
    """Who may assert ``type_``, in words."""
    roles = AUTHORIZED_ROLES[type_]
    if type_ in REGULATOR_TYPES:
        return "REGULATOR (current role)"
    if _ENT <= roles:
        extra = sorted(roles - _ENT)
        return "any obliged enterprise (" + ", ".join(ENTERPRISE_ROLES) + ")" + (
            " and " + ", ".join(extra) if extra else "")
    return ", ".join(sorted(roles))
