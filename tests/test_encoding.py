"""Canonical msgpack (ledger.encoding): round trip, determinism, strict decoding, and the
normal forms of decimals and times."""

from __future__ import annotations

import random
import struct
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import msgpack
import pytest
from hypothesis import assume, given, strategies as st

from reledger.ledger import encoding
from reledger.ledger.encoding import (MAX_DEPTH, MAX_INT, MIN_INT, EncodingError, canonical, decimal_text, decode,
                             is_decimal_text, parse_decimal, parse_time, time_text)

# --- strategies ------------------------------------------------------------------------

ints = st.integers(min_value=MIN_INT, max_value=MAX_INT)
scalars = st.none() | st.booleans() | ints | st.text(max_size=40) | st.binary(max_size=40)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
maps = st.dictionaries(st.text(max_size=12), values, min_size=2, max_size=8)


def _same(a, b) -> bool:
    """Equality that also tells bool from int and str from bytes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _shuffled(value, rnd: random.Random):
    """The same value, every map rebuilt with its keys in another insertion order."""
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: _shuffled(value[k], rnd) for k in keys}
    return value


def _refused(data: bytes) -> None:
    with pytest.raises(EncodingError):
        decode(data)


# --- round trip and determinism ------------------------------------------------------

@given(values)
def test_round_trip(value):
    data = canonical(value)
    assert _same(decode(data), value)
    assert canonical(decode(data)) == data


@given(values, st.randoms(use_true_random=False))
def test_deterministic_whatever_the_insertion_order(value, rnd):
    assert canonical(_shuffled(value, rnd)) == canonical(value)


@given(maps)
def test_map_keys_sorted_by_utf8_bytes(m):
    data = canonical(m)
    keys = list(msgpack.unpackb(data, raw=True).keys())  # keys in wire order, as bytes
    assert keys == sorted(k.encode() for k in m)


def test_key_order_examples():
    # UTF-8 byte order: upper case before lower case, BMP before astral planes
    m = {"\U0001F600": 1, "\uFF61": 2, "a": 3, "B": 4, "": 5}
    data = canonical(m)
    assert list(msgpack.unpackb(data).keys()) == ["", "B", "a", "\uFF61", "\U0001F600"]


@given(values)
def test_shortest_form_is_msgpack_python(value):
    assert canonical(value) == msgpack.packb(encoding._normalise(value), use_bin_type=True)


def test_tuples_and_bytearrays_normalise():
    assert canonical((1, bytearray(b"ab"), memoryview(b"c"))) == canonical([1, b"ab", b"c"])


@pytest.mark.parametrize("value", [
    1.5, 0.0, float("nan"), {"q": 1.0}, [1, 2.5], {1: "int key"}, {b"k": 1}, {None: 1},
    2**64, MIN_INT - 1, Decimal("1.5"), datetime(2024, 1, 1, tzinfo=timezone.utc), {1, 2}, object(),
])
def test_canonical_refuses(value):
    with pytest.raises(EncodingError):
        canonical(value)


def test_depth_limit():
    deep = []
    v = deep
    for _ in range(MAX_DEPTH):
        v.append([])
        v = v[0]
    canonical(deep)  # MAX_DEPTH levels below the top are fine
    v.append([])
    with pytest.raises(EncodingError):
        canonical(deep)
    raw = msgpack.packb(deep)
    _refused(raw)


def test_int_bounds():
    for v in (MIN_INT, MAX_INT, -1, 0, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**32, -2**31 - 1):
        assert decode(canonical(v)) == v


# --- strict decoding -----------------------------------------------------------------

_INT_FORMS = [
    (b"\xcc", ">B", 0, 2**8 - 1), (b"\xcd", ">H", 0, 2**16 - 1), (b"\xce", ">I", 0, 2**32 - 1),
    (b"\xcf", ">Q", 0, 2**64 - 1), (b"\xd0", ">b", -2**7, 2**7 - 1), (b"\xd1", ">h", -2**15, 2**15 - 1),
    (b"\xd2", ">i", -2**31, 2**31 - 1), (b"\xd3", ">q", -2**63, 2**63 - 1),
]


@given(ints, st.sampled_from(_INT_FORMS))
def test_non_minimal_ints_refused(v, form):
    prefix, fmt, lo, hi = form
    assume(lo <= v <= hi)
    data = prefix + struct.pack(fmt, v)
    if data == canonical(v):
        assert decode(data) == v
    else:
        _refused(data)
        _refused(b"\x92\x01" + data)  # inside an array too: [1, v]


@pytest.mark.parametrize("data", [
    b"\xcc\x00", b"\xcc\x7f", b"\xcd\x00\xff", b"\xce\x00\x00\xff\xff", b"\xcf" + bytes(7) + b"\x01",
    b"\xd0\xff", b"\xd0\x05", b"\xd1\xff\x80", b"\xd3" + b"\xff" * 8,
])
def test_non_minimal_int_examples(data):
    _refused(data)


@given(maps, st.randoms(use_true_random=False))
def test_unsorted_map_keys_refused(m, rnd):
    keys = list(m)
    rnd.shuffle(keys)
    assume(keys != sorted(keys, key=lambda k: k.encode()))
    data = msgpack.packb({k: encoding._normalise(m[k]) for k in keys}, use_bin_type=True)
    _refused(data)
    _refused(b"\x91" + data)  # inside an array too


def test_duplicate_keys_refused():
    _refused(b"\x82\xa1a\x01\xa1a\x01")
    _refused(b"\x82\xa1a\x01\xa1a\x02")
    _refused(b"\x81\xa1m" + b"\x82\xa1a\x01\xa1a\x02")  # nested
    _refused(b"\x83\xa1a\x01\xa1b\x02\xa1a\x03")


@pytest.mark.parametrize("data", [
    msgpack.packb(1.5), msgpack.packb(0.0), struct.pack(">Bf", 0xCA, 1.5), struct.pack(">Bd", 0xCB, 2.0),
    msgpack.packb({"qty": 1.5}), msgpack.packb([1, 2, 3.0]),
    struct.pack(">Bf", 0xCA, 1.0),  # an integral float is still a float
])
def test_floats_refused(data):
    _refused(data)


@pytest.mark.parametrize("data", [
    msgpack.packb(msgpack.ExtType(1, b"x")), msgpack.packb(msgpack.ExtType(0, b"")),
    msgpack.packb(msgpack.Timestamp(1, 0)),  # ext -1 is decoded by msgpack itself
    msgpack.packb({"a": msgpack.ExtType(5, b"abcd")}, use_bin_type=True),
    b"\xd4\x01\x00", b"\xc7\x00\x02",
])
def test_ext_types_refused(data):
    _refused(data)


@given(values, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_refused(value, extra):
    _refused(canonical(value) + extra)


@given(values)
def test_truncation_refused(value):
    data = canonical(value)
    for cut in range(len(data)):
        _refused(data[:cut])


@given(st.text(max_size=31))
def test_str8_where_fixstr_fits_refused(s):
    raw = s.encode()
    assume(len(raw) <= 31)
    assert decode(canonical(s)) == s
    _refused(b"\xd9" + bytes([len(raw)]) + raw)
    _refused(b"\xda" + struct.pack(">H", len(raw)) + raw)
    _refused(b"\xdb" + struct.pack(">I", len(raw)) + raw)


@pytest.mark.parametrize("data", [
    b"\xda\x00\x20" + b"a" * 32,  # str16 where str8 fits
    b"\xc5\x00\x03abc",  # bin16 where bin8 fits
    b"\xc6\x00\x00\x00\x03abc",  # bin32 where bin8 fits
    b"\xdc\x00\x01\x01",  # array16 of one item
    b"\xdd\x00\x00\x00\x00",  # array32 empty
    b"\xde\x00\x01\xa1a\x01",  # map16 of one pair
    b"\xdf\x00\x00\x00\x00",  # map32 empty
])
def test_longer_containers_refused(data):
    _refused(data)


@given(st.binary(max_size=20))
def test_bin_and_str_are_not_confused(b):
    assert canonical(b) != canonical(b.decode("latin-1"))
    assert decode(canonical(b)) == b and type(decode(canonical(b))) is bytes
    # bin bytes relabelled as str8 decode to text, which re-encodes as fixstr/str8 of the text:
    # the bytes never come back as binary.
    relabelled = b"\xd9" + bytes([len(b)]) + b
    try:
        v = decode(relabelled)
    except EncodingError:
        return
    assert isinstance(v, str)


def test_bin_map_keys_refused():
    _refused(msgpack.packb({b"a": 1}, use_bin_type=True))
    _refused(b"\x81\x01\x01")  # int key
    _refused(b"\x81\xc0\x01")  # nil key


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                                 b"\xc0\x80"])
def test_invalid_utf8_refused(raw):
    _refused(bytes([0xA0 | len(raw)]) + raw)
    _refused(b"\x81" + bytes([0xA0 | len(raw)]) + raw + b"\x01")  # as a map key


def test_reserved_byte_and_non_bytes():
    _refused(b"\xc1")
    _refused(b"")
    with pytest.raises(EncodingError):
        decode("not bytes")  # type: ignore[arg-type]


@given(st.binary(max_size=64))
def test_arbitrary_bytes_either_canonical_or_refused(data):
    try:
        v = decode(data)
    except EncodingError:
        return
    assert canonical(v) == data


@given(values, st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_flipped_byte_refused_or_canonical(value, pos, delta):
    data = bytearray(canonical(value))
    pos %= len(data)
    data[pos] = (data[pos] + delta) % 256
    try:
        v = decode(bytes(data))
    except EncodingError:
        return
    assert canonical(v) == bytes(data)
    assert not _same(v, value)


# --- decimals --------------------------------------------------------------------------

decimals = st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-10**15, max_value=10**15)


@given(decimals)
def test_decimal_round_trip(d):
    text = decimal_text(d, places=3)
    assert is_decimal_text(text)
    assert parse_decimal(text, places=3) == d
    assert decimal_text(parse_decimal(text)) == text


@given(decimals, st.integers(min_value=0, max_value=4), st.integers(min_value=-2, max_value=2))
def test_decimal_equal_values_one_text(d, zeros, shift):
    # the same number spelled with trailing zeros or an exponent gives the same normal form
    spelled = d.quantize(Decimal(10) ** -(3 + zeros))
    scaled = d.scaleb(shift).scaleb(-shift)
    assert decimal_text(spelled) == decimal_text(d) == decimal_text(scaled)
    assert decimal_text(str(d)) == decimal_text(d)


@pytest.mark.parametrize("value,text", [
    (Decimal("1.500"), "1.5"), ("1.500", "1.5"), (Decimal("15E-1"), "1.5"), (Decimal("1E+2"), "100"),
    (Decimal("-0"), "0"), (Decimal("-0.000"), "0"), ("0.000", "0"), (0, "0"), (12, "12"), (-3, "-3"),
    ("0.001", "0.001"), (Decimal("1000000000000000000000"), "1000000000000000000000"),
    (Decimal("-12.340"), "-12.34"), ("7.0", "7"),
])
def test_decimal_text_examples(value, text):
    assert decimal_text(value) == text
    assert parse_decimal(text) == Decimal(value)


@pytest.mark.parametrize("value", [1.5, 0.1, True, False, "abc", "", "NaN", "Infinity", "-Infinity",
                                   Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), "1,5", "0x10"])
def test_decimal_text_refuses(value):
    with pytest.raises(EncodingError):
        decimal_text(value)


def test_decimal_places_refused_never_rounded():
    assert decimal_text("1.234", places=3) == "1.234"
    assert decimal_text("1.2340", places=3) == "1.234"
    assert decimal_text("5", places=0) == "5"
    with pytest.raises(EncodingError):
        decimal_text("1.2345", places=3)
    with pytest.raises(EncodingError):
        decimal_text("0.0001", places=3)
    with pytest.raises(EncodingError):
        parse_decimal("1.2345", places=3)
    assert parse_decimal("1.234", places=3) == Decimal("1.234")


@pytest.mark.parametrize("text", [
    "01", "00", "1.0", "1.", ".5", "+1", "1e3", "1E3", " 1", "1 ", "1,5", "NaN", "Infinity", "", "0.50",
    "-", "--1", "1.2.3", "١", "１", "0.0", "-0.0", "1_000",
])
def test_parse_decimal_refuses_non_normal(text):
    assert not is_decimal_text(text)
    with pytest.raises(EncodingError):
        parse_decimal(text)


def test_parse_decimal_refuses_negative_zero():
    with pytest.raises(EncodingError):
        parse_decimal("-0")


def test_parse_decimal_refuses_trailing_newline():
    assert not is_decimal_text("12.5\n")
    with pytest.raises(EncodingError):
        parse_decimal("1\n")


@given(st.from_regex(r"-?[0-9]{1,5}(\.[0-9]{0,4})?", fullmatch=True) | st.text(max_size=8))
def test_parse_decimal_accepts_only_its_normal_form(text):
    assume(text != "-0" and not text.endswith("\n"))  # see the xfail tests above
    try:
        d = parse_decimal(text)
    except EncodingError:
        return
    assert decimal_text(d) == text


@pytest.mark.parametrize("value", [None, 1, b"1", Decimal("1")])
def test_parse_decimal_refuses_non_text(value):
    with pytest.raises(EncodingError):
        parse_decimal(value)  # type: ignore[arg-type]


# --- times -----------------------------------------------------------------------------

aware = st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30),
                     timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=8)),
                                                timezone(timedelta(hours=-5, minutes=-30))]))


@given(aware)
def test_time_round_trip(dt):
    text = time_text(dt)
    assert encoding._TIME_RE.match(text)
    back = parse_time(text)
    assert back == dt and back.tzinfo == timezone.utc
    assert time_text(back) == text
    assert encoding.micros_to_time_text(encoding.time_to_micros(dt)) == text


@given(aware, aware)
def test_micros_order_like_times(a, b):
    ta, tb = time_text(a), time_text(b)
    assert (encoding.time_to_micros(parse_time(ta)) < encoding.time_to_micros(parse_time(tb))) == (a < b)


def test_time_text_does_not_sort_as_text():
    """The fraction has no fixed width, so texts must be parsed before they are compared."""
    earlier, later = "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.5Z"
    assert parse_time(earlier) < parse_time(later) and not earlier < later
    assert parse_time("2024-01-01T00:00:00.5Z") < parse_time("2024-01-01T00:00:00.55Z")
    assert "2024-01-01T00:00:00.5Z" > "2024-01-01T00:00:00.55Z"


@pytest.mark.parametrize("dt,text", [
    (datetime(2024, 3, 1, 8, 0, 0, tzinfo=timezone.utc), "2024-03-01T08:00:00Z"),
    (datetime(2024, 3, 1, 8, 0, 0, 500000, tzinfo=timezone.utc), "2024-03-01T08:00:00.5Z"),
    (datetime(2024, 3, 1, 8, 0, 0, 120, tzinfo=timezone.utc), "2024-03-01T08:00:00.00012Z"),
    (datetime(2024, 3, 1, 16, 0, 0, tzinfo=timezone(timedelta(hours=8))), "2024-03-01T08:00:00Z"),
    (datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=8))), "2023-12-31T18:00:00Z"),
])
def test_time_text_examples(dt, text):
    assert time_text(dt) == text
    assert parse_time(text) == dt


def test_time_text_refuses_naive():
    with pytest.raises(EncodingError):
        time_text(datetime(2024, 1, 1))


@pytest.mark.parametrize("text", [
    "2024-01-01T00:00:00+00:00", "2024-01-01T08:00:00+08:00", "2024-01-01 00:00:00Z", "2024-01-01t00:00:00z",
    "2024-01-01T00:00:00z", "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00.10Z", "2024-01-01T00:00:00.Z",
    "2024-01-01T00:00:00.1234567Z", "2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2024-01-01T24:00:00Z",
    "2024-12-31T23:59:60Z", "2024-1-01T00:00:00Z", "2024-01-01T00:00Z", "2024-01-01", "2024-01-01T00:00:00",
    "", " 2024-01-01T00:00:00Z", "2024-13-01T00:00:00Z", "2024-00-10T00:00:00Z", "２０２４-01-01T00:00:00Z",
    "2024-01-01T00:00:00Z\n",
])
def test_parse_time_refuses_non_normal(text):
    with pytest.raises(EncodingError):
        parse_time(text)


def test_parse_time_trailing_newline_with_fraction():
    with pytest.raises(EncodingError):
        parse_time("2024-01-01T00:00:00.5Z\n")


@pytest.mark.parametrize("value", [None, 1704067200, b"2024-01-01T00:00:00Z"])
def test_parse_time_refuses_non_text(value):
    with pytest.raises(EncodingError):
        parse_time(value)  # type: ignore[arg-type]


@given(st.text(alphabet="0123456789-T:.Z+ ", max_size=28))
def test_parse_time_accepts_only_its_normal_form(text):
    try:
        dt = parse_time(text)
    except EncodingError:
        return
    assert time_text(dt) == text


def test_time_text_years_below_1000_refused():
    """The normal form has four-digit years (1000-9999): earlier times are refused, never
    written in a form that parse_time would refuse."""
    with pytest.raises(EncodingError):
        time_text(datetime(999, 1, 1, tzinfo=timezone.utc))


@pytest.mark.parametrize("data", [
    b"\x91" * 100_000 + b"\xc0",  # absurdly deep
    b"\x81\xa1a" * 5_000 + b"\xc0",
    b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
    b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion pairs
    b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
    b"\xdb\xff\xff\xff\xffab",  # str32 claiming 4 GiB
])
def test_hostile_inputs_refused_quickly(data):
    _refused(data)


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb", {"\ud83d": 1}, ["ok", "\udc00"]])
def test_lone_surrogates_refused(value):
    with pytest.raises(EncodingError):
        canonical(value)


def test_documented_examples():
    """Examples from docs/FORMAT.md 1.2-1.3."""
    assert canonical(5) == b"\x05" and canonical(-32) == b"\xe0" and canonical(-33) == b"\xd0\xdf"
    assert canonical("abc") == b"\xa3abc" and canonical([]) == b"\x90" and canonical({}) == b"\x80"
    assert canonical({"b": 1, "a": 2}) == bytes.fromhex("82a16102a16201")
    for bad in ("cc05", "d005", "d0e0", "d903616263", "dc0000", "de0001a16101", "82a16201a16102", "810102",
                "81c4016101", "81c001", "a1ff", "a3eda080", "a2c0af"):
        _refused(bytes.fromhex(bad))


@given(st.lists(st.sampled_from(["list", "map"]), min_size=28, max_size=36),
       st.sampled_from([None, 1, "x", b"y", [], {}]))
def test_depth_limit_same_for_encoder_and_decoder(wrappers, leaf):
    value = leaf
    for w in reversed(wrappers):
        value = [value] if w == "list" else {"k": value}
    raw = msgpack.packb(value, use_bin_type=True)  # lenient: any depth
    try:
        data = canonical(value)
    except EncodingError:
        _refused(raw)
        return
    assert data == raw and _same(decode(raw), value)


@pytest.mark.parametrize("text,ok", [
    ("0000-01-01T00:00:00Z", False), ("0999-01-01T00:00:00Z", False), ("1000-01-01T00:00:00Z", True),
    ("9999-12-31T23:59:59.999999Z", True), ("2024-02-29T00:00:00Z", True), ("1900-02-29T00:00:00Z", False),
    ("2000-02-29T00:00:00Z", True), ("2024-04-31T00:00:00Z", False), ("2024-12-31T23:59:59.000001Z", True),
])
def test_parse_time_calendar_edges(text, ok):
    if ok:
        assert time_text(parse_time(text)) == text
    else:
        with pytest.raises(EncodingError):
            parse_time(text)


@given(st.recursive(st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=5)
                    | st.binary(max_size=5) | st.floats(allow_nan=False),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=4), max_leaves=12),
       st.booleans())
def test_fast_decode_judges_like_the_strict_decoder(value, sort_keys):
    """decode() takes a fast path for canonical input; it must accept and refuse exactly what
    the strict decoder does, with the same value."""
    from reledger.ledger.encoding import _decode_strict

    def order(v):
        if isinstance(v, dict):
            items = sorted(v.items()) if sort_keys else list(v.items())
            return {k: order(x) for k, x in items}
        if isinstance(v, list):
            return [order(x) for x in v]
        return v

    data = msgpack.packb(order(value), use_bin_type=True)
    try:
        expected = ("ok", _decode_strict(data))
    except EncodingError:
        expected = ("refused", None)
    try:
        got = ("ok", decode(data))
    except EncodingError:
        got = ("refused", None)
    assert got == expected
