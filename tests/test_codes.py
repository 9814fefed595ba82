"""codes.parse: every reject reason, the accepted forms, and properties over arbitrary input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import codes
from agent.codes import REASONS, gtin_check_digit, parse

GOOD = "81234567890123456789"


def gs1_raw(gtin: str, serial: str, expiry: str = "261231", lot: str = "LOT42") -> str:
    return f"]d201{gtin}17{expiry}10{lot}\x1d21{serial}"


GTIN = "0690123456789" + gtin_check_digit("0690123456789")


@pytest.mark.parametrize(
    "raw",
    [
        GOOD,
        GOOD + "\r",
        GOOD + "\n",
        GOOD + "\r\n",
        GOOD + "\t",
        "  " + GOOD + "  \r\n",
        "]C0" + GOOD + "\r",
        GOOD.encode(),
        b"]C0" + GOOD.encode() + b"\r\n",
    ],
)
def test_valid_nmpa20_forms(raw):
    parsed = parse(raw)
    assert parsed.valid
    assert parsed.kind == "nmpa20"
    assert parsed.code == GOOD
    assert (parsed.product_id, parsed.serial, parsed.check) == ("8123456", "789012345", "6789")


def test_aim_symbology_is_kept():
    assert parse("]C0" + GOOD).symbology == "]C0"
    assert parse(GOOD).symbology is None


def test_leading_digits_are_configurable():
    special = "9" + GOOD[1:]
    assert parse(special).reason == "bad_prefix"
    assert parse(special, leading_digits=("8", "9")).valid


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty"),
        (b"\r\n", "empty"),
        ("   \t", "empty"),
        (b"\xff\xfe8123", "not_text"),
        (b"8123\x004567890123456789", "not_text"),
        ("81234567890\x07123456789", "not_text"),
        (b"8" * 513, "too_long"),
        ("8" * 600, "too_long"),
        ("1234567890", "wrong_length"),
        ("812345678901234567890", "wrong_length"),
        ("8123456789012345678", "wrong_length"),
        ("8123456789O123456789", "not_numeric"),
        ("https://example.cn/8123", "not_numeric"),
        ("８１２３４５６７８９０１２３４５６７８９", "not_numeric"),
        ("71234567890123456789", "bad_prefix"),
        ("6901234567892", "product_barcode"),
        ("]E06901234567892", "product_barcode"),
        ("036000291452", "product_barcode"),
        ("96385074", "product_barcode"),
        (gs1_raw(GTIN, "SER123"), "gs1_not_accepted"),
        (f"(01){GTIN}(21)SER123", "gs1_not_accepted"),
    ],
)
def test_reject_reasons(raw, reason):
    parsed = parse(raw)
    assert not parsed.valid
    assert parsed.reason == reason
    assert parsed.reason in REASONS


def test_thirteen_digits_with_a_bad_check_is_wrong_length_not_product_barcode():
    assert parse("6901234567890").reason == "wrong_length"


def test_gs1_raw_with_gs_separators():
    parsed = parse(gs1_raw(GTIN, "SER123"), accept_gs1=True)
    assert parsed.valid and parsed.kind == "gs1"
    assert parsed.code == f"(01){GTIN}(21)SER123"
    assert (parsed.product_id, parsed.serial, parsed.expiry, parsed.lot) == (GTIN, "SER123", "261231", "LOT42")
    assert parsed.symbology == "]d2"


def test_gs1_bracketed_human_form_gives_the_same_code():
    raw = parse(gs1_raw(GTIN, "SER123"), accept_gs1=True)
    human = parse(f"(01){GTIN}(17)261231(10)LOT42(21)SER123", accept_gs1=True)
    assert human.valid and human.code == raw.code and human.lot == "LOT42"


def test_gs1_leading_fnc1_and_c1_prefix():
    parsed = parse(f"]C1\x1d01{GTIN}21ABC", accept_gs1=True)
    assert parsed.valid and parsed.serial == "ABC"


def test_gs1_bad_check_digit():
    wrong = GTIN[:-1] + str((int(GTIN[-1]) + 1) % 10)
    parsed = parse(gs1_raw(wrong, "X1"), accept_gs1=True)
    assert parsed.reason == "gs1_bad_check"
    assert GTIN[-1] in parsed.detail


@pytest.mark.parametrize(
    "raw",
    [
        f"]d201{GTIN}99",  # variable AI with nothing in it
        f"]d201{GTIN[:-2]}",  # GTIN too short
        f"]d201{GTIN}17261399",  # month 13
        f"]d201{GTIN}88XYZ",  # unknown AI
        f"(01){GTIN}(21)",  # empty serial
        f"(01){GTIN}junk(21)X",
        "]d2" + "10LOT\x1d21SER",  # no GTIN
        f"]d201{GTIN}21{'S' * 21}",  # serial over 20
    ],
)
def test_gs1_malformed(raw):
    assert parse(raw, accept_gs1=True).reason == "gs1_malformed"


def test_gs1_without_serial_is_a_product_code():
    assert parse(f"]d201{GTIN}17261231", accept_gs1=True).reason == "product_barcode"


def test_gtin_check_digit_known_values():
    assert gtin_check_digit("690123456789") == "2"
    assert gtin_check_digit("03600029145") == "2"
    assert gtin_check_digit("9638507") == "4"


def test_rejections_carry_printable_text():
    parsed = parse(b"12\x00\xff")
    assert parsed.reason == "not_text"
    assert parsed.text == "12\\x00\\xff"
    assert parsed.text.isprintable()


def test_too_long_text_is_truncated_for_display():
    parsed = parse(b"9" * 5000)
    assert parsed.reason == "too_long"
    assert len(parsed.text) < 100


@given(st.binary(max_size=700))
def test_arbitrary_bytes_never_raise(raw):
    parsed = parse(raw, accept_gs1=True)
    assert parsed.valid or parsed.reason in REASONS
    if not parsed.valid:
        assert parsed.text.isprintable() or parsed.text == ""


@given(st.text(max_size=600))
def test_arbitrary_text_never_raises(text):
    parsed = parse(text, accept_gs1=True)
    assert parsed.valid or parsed.reason in REASONS


@given(st.from_regex(r"8[0-9]{19}", fullmatch=True), st.sampled_from(["", "\r", "\n", "\r\n", "\t"]))
def test_every_valid_code_round_trips(code, terminator):
    for raw in (code + terminator, (code + terminator).encode(), "]C0" + code + terminator):
        parsed = parse(raw)
        assert parsed.valid and parsed.code == code
        assert parsed.product_id + parsed.serial + parsed.check == code


@given(st.from_regex(r"[0-9]{12}", fullmatch=True))
def test_every_ean13_is_recognised_as_a_product_barcode(body):
    assert parse(body + gtin_check_digit(body)).reason == "product_barcode"


def test_codes_imports_nothing_from_the_project():
    with open(codes.__file__) as f:
        source = f.read()
    assert "from agent" not in source and "import agent" not in source
