"""Reference data, versioned in one place: products, REO factors, recovery bands, rule parameters.

The command API's catalogue (commands/catalogue.py) validates against these values and the
projections evaluate the rules with them; both import them from here (``projections`` may not
import ``commands``). A change of any value is a new version.
"""

from __future__ import annotations

from typing import Any

VERSION = "2024.1"


def _products() -> dict[str, dict[str, str | None]]:
    """Product code -> {"class": MINERAL|SEPARATED|METAL|ALLOY, "element": symbol or None}."""
    p: dict[str, dict[str, str | None]] = {}
    for code in ("RE_CONCENTRATE", "BASTNAESITE_CONCENTRATE", "MONAZITE_CONCENTRATE", "IONIC_CONCENTRATE",
                 "MIXED_CARBONATE", "MIXED_CHLORIDE", "MIXED_OXIDE"):
        p[code] = {"class": "MINERAL", "element": None}
    for code, el in (("La2O3", "La"), ("CeO2", "Ce"), ("Pr6O11", "Pr"), ("Nd2O3", "Nd"), ("Sm2O3", "Sm"),
                     ("Eu2O3", "Eu"), ("Gd2O3", "Gd"), ("Tb4O7", "Tb"), ("Dy2O3", "Dy"), ("Ho2O3", "Ho"),
                     ("Er2O3", "Er"), ("Tm2O3", "Tm"), ("Yb2O3", "Yb"), ("Lu2O3", "Lu"), ("Y2O3", "Y"),
                     ("Sc2O3", "Sc")):
        p[code] = {"class": "SEPARATED", "element": el}
    for code in ("PrNd_OXIDE", "LaCe_OXIDE", "SEG_ENRICHED", "HEAVY_RE_ENRICHED", "CE_CARBONATE",
                 "LaCe_CARBONATE"):
        p[code] = {"class": "SEPARATED", "element": None}
    for el in ("La", "Ce", "Pr", "Nd", "Sm", "Gd", "Tb", "Dy", "Ho", "Er", "Y", "Sc"):
        p[f"{el}_METAL"] = {"class": "METAL", "element": el}
    for code in ("PrNd_METAL", "LaCe_METAL", "MISCHMETAL"):
        p[code] = {"class": "METAL", "element": None}
    for code in ("DyFe_ALLOY", "GdFe_ALLOY", "HoFe_ALLOY", "NdFe_ALLOY", "PrNdFe_ALLOY"):
        p[code] = {"class": "ALLOY", "element": None}
    # magnets (magnet makers are obliged since 2025) and scrap, which moves between parties under
    # its own product codes (the scrap types of SecondaryFeedReceived)
    p["NdFeB_MAGNET"] = {"class": "MAGNET", "element": None}
    p["NdFeB_DyTb_MAGNET"] = {"class": "MAGNET", "element": None, "contains": "Dy,Tb"}
    p["SmCo_MAGNET"] = {"class": "MAGNET", "element": None, "contains": "Sm"}
    for code in ("MAGNET_SCRAP", "MAGNET_SLUDGE", "POLISHING_POWDER", "PHOSPHOR", "CATALYST", "BATTERY"):
        p[code] = {"class": "SCRAP", "element": None}
    return p


REFERENCE_DATA: dict[str, Any] = {
    "version": VERSION,
    "sources": "DOMAIN.md: REO factors from atomic weights; recovery bands from the 2016 industry "
               "standard conditions",
    # kg REO per kg metal (oxide named where the oxide is not M2O3)
    "reo_factors": {"La": "1.1728", "Ce": "1.2284", "Pr": "1.2082", "Nd": "1.1664", "Sm": "1.1596",
                    "Eu": "1.1579", "Gd": "1.1526", "Tb": "1.1762", "Dy": "1.1477", "Ho": "1.1455",
                    "Er": "1.1435", "Tm": "1.1421", "Yb": "1.1387", "Lu": "1.1372", "Y": "1.2699",
                    "Sc": "1.5338"},
    "reo_oxides": {"Ce": "CeO2", "Pr": "Pr6O11", "Tb": "Tb4O7"},
    # minimum recoveries (%), exclusive: yields at or below flag; above 100 % of input flags too
    "recovery_bands": {"concentrate_to_mixed": {"min_pct": "92"},
                       "mixed_to_separated_rock": {"min_pct": "96"},
                       "mixed_to_separated_ionic": {"min_pct": "94"},
                       "max_pct": "100"},
    "products": _products(),
}

PRODUCTS: dict[str, dict[str, str | None]] = REFERENCE_DATA["products"]


def product_class(code: str | None) -> str | None:
    info = PRODUCTS.get(code or "")
    return info["class"] if info else None


#: Parameters of the rules, with DOMAIN.md's defaults ("The rules, precisely": each number is a
#: parameter the regulator's entries set). A ``RuleParameterSet`` entry of the regulator changes
#: one from its record time on; each finding states the parameters it was judged with.
RULE_PARAMETERS: dict[str, Any] = {
    "receipt_within_days": 30,        # rule 5: a shipment must be received within N days (business times)
    "report_due_day": 10,             # rule 6: the previous month's flows by 24:00 legal time on this day
    "backdating_days": 15,            # rule 7: recorded this long after its business time (outside the window)
    "mass_balance_tolerance_pct": "0.5",  # rule 4: |in - out - losses| above this % of input
    "stock_count_tolerance_pct": "0.5",   # rule 3: count vs book difference tolerated
    "reo_tolerance_pct": "0.1",       # declared REO vs dry kg x TREO % (or metal kg x factor), % of the computed
    "band_concentrate_to_mixed_pct": "92",   # rock-type concentrate -> mixed RE
    "band_mixed_to_separated_rock_pct": "96",  # mixed RE (rock) -> separated products
    "band_ionic_pct": "94",           # ion-adsorption concentrate (mixed RE) -> separated products
    "band_max_pct": "100",            # above: unrecorded feed
    "suballocation_working_days": 10,  # a group sub-allocates a batch within N working days
    "export_control_since": "2025-01-01",  # MOFCOM Announcement 2025 No. 18 (legal date)
    "controlled_elements": "Sm,Gd,Tb,Dy,Lu,Sc,Y",
    "report_tolerance_pct": "0.1",    # a monthly report's total / a quota execution figure vs the ledger's
    # the working-day calendar (SUBALLOCATION_LATE counts working days): public holidays and the
    # make-up working days (调休, weekends that are working days), legal (CST) dates; see
    # WORKDAY_CALENDAR_SOURCES. A RuleParameterSet replaces the calendar of the years it names.
    "holidays": ",".join((
        "2024-01-01", "2024-02-10..2024-02-17", "2024-04-04..2024-04-06", "2024-05-01..2024-05-05", "2024-06-10",
        "2024-09-15..2024-09-17", "2024-10-01..2024-10-07",
        "2025-01-01", "2025-01-28..2025-02-04", "2025-04-04..2025-04-06", "2025-05-01..2025-05-05",
        "2025-05-31..2025-06-02", "2025-10-01..2025-10-08")),
    "makeup_workdays": ",".join((
        "2024-02-04", "2024-02-18", "2024-04-07", "2024-04-28", "2024-05-11", "2024-09-14", "2024-09-29",
        "2024-10-12",
        "2025-01-26", "2025-02-08", "2025-04-27", "2025-09-28", "2025-10-11")),
}

#: Where the default working-day calendar comes from: the State Council General Office's yearly
#: notice on public holidays. Only these years are known by default; for any other year working
#: days are Monday to Friday until the regulator sets the year's calendar (RuleParameterSet
#: ``holidays`` and ``makeup_workdays``), and a finding that counted days there says so.
WORKDAY_CALENDAR_SOURCES: dict[int, str] = {
    2024: "国务院办公厅关于2024年部分节假日安排的通知 (国办发明电〔2023〕7号, 2023-10-25)",
    2025: "国务院办公厅关于2025年部分节假日安排的通知 (国办发明电〔2024〕12号, 2024-11-12)",
}

#: the parameters whose value is a calendar: comma-separated legal dates YYYY-MM-DD, ranges
#: YYYY-MM-DD..YYYY-MM-DD within one year, or a bare year YYYY (that year, with no dates listed)
CALENDAR_PARAMETERS = frozenset({"holidays", "makeup_workdays"})

#: the parameters whose value is a whole number (days, a day of month, hours)
INT_PARAMETERS = frozenset({"receipt_within_days", "report_due_day", "backdating_days",
                            "suballocation_working_days"})

def calendar_dates(text: str) -> dict[int, frozenset[str]]:
    """The dates of a calendar parameter's value, by year (see CALENDAR_PARAMETERS); raises
    ValueError naming the first item that is not a date, a range within a year or a year."""
    import datetime as _dt

    out: dict[int, set[str]] = {}
    for item in str(text).split(","):
        item = item.strip()
        try:
            if len(item) == 4 and item.isdigit():
                out.setdefault(int(item), set())
                continue
            first, _, last = item.partition("..")
            a = _dt.date.fromisoformat(first)
            b = _dt.date.fromisoformat(last) if last else a
            if len(first) != 10 or (last and len(last) != 10):
                raise ValueError
        except ValueError:
            raise ValueError(f"{item!r} is not a date YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD or a year YYYY") \
                from None
        if b < a or a.year != b.year or (b - a).days > 366:
            raise ValueError(f"{item!r}: a range runs forward within one year")
        days = out.setdefault(a.year, set())
        while a <= b:
            days.add(a.isoformat())
            a += _dt.timedelta(days=1)
    return {y: frozenset(d) for y, d in out.items()}


def calendar_text(by_year: dict[int, frozenset[str]]) -> str:
    """The value of a calendar parameter holding ``by_year`` (every year named, dates sorted)."""
    items = []
    for year in sorted(by_year):
        items += sorted(by_year[year]) or [str(year)]
    return ",".join(items)


def merge_calendar(current: str, new: str) -> str:
    """A calendar parameter after a RuleParameterSet: the years ``new`` names are replaced by its
    dates, the other years of ``current`` stay (a regulator publishes a year at a time)."""
    merged = dict(calendar_dates(current))
    merged.update(calendar_dates(new))
    return calendar_text(merged)


#: Legal time is China Standard Time (UTC+8): days, months, years and deadlines (a fact of the
#: law, not a parameter).
LEGAL_UTC_OFFSET_HOURS = 8

#: REO factor tables, versioned: (version, in force from (legal date), factors). The table in
#: force at a business time is the last whose date is not after it.
REO_FACTOR_TABLES: tuple[tuple[str, str, dict[str, str]], ...] = (
    (VERSION, "1990-01-01", dict(REFERENCE_DATA["reo_factors"])),
)


def reo_factor_table(day: str = "9999-12-31") -> tuple[str, dict[str, str]]:
    """(version, factors) of the table in force on ``day`` (YYYY-MM-DD)."""
    chosen = REO_FACTOR_TABLES[0]
    for t in REO_FACTOR_TABLES:
        if t[1] <= day:
            chosen = t
    return chosen[0], chosen[2]


def element_of(code: str | None) -> str | None:
    info = PRODUCTS.get(code or "")
    return info["element"] if info else None


def elements_in(code: str | None) -> list[str]:
    """The rare earth elements a product is made of, as far as the reference data says: its
    element, the elements an alloy's or a magnet's code names (DyFe_ALLOY: Dy)."""
    info = PRODUCTS.get(code or "")
    if not info:
        return []
    if info["element"]:
        return [info["element"]]
    if info.get("contains"):
        return info["contains"].split(",")
    if info["class"] == "ALLOY":
        head = code.split("_")[0]  # DyFe, PrNdFe
        out, i = [], 0
        while i < len(head):
            two = head[i:i + 2]
            if two in REFERENCE_DATA["reo_factors"]:
                out.append(two)
                i += 2
            elif head[i] in REFERENCE_DATA["reo_factors"]:
                out.append(head[i])
                i += 1
            else:
                i += 1
        return out
    return []
