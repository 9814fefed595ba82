"""KeyDecoder from real evdev.InputEvent sequences, as a keyboard-wedge scanner sends them."""

from __future__ import annotations

from evdev import InputEvent
from evdev import ecodes as e

from agent import codes
from agent.sources.hid import UNMAPPED, KeyDecoder

CODE = "81234567890123456789"
MAIN_ROW = {str(n): getattr(e, f"KEY_{n}") for n in range(10)}
KEYPAD = {str(n): getattr(e, f"KEY_KP{n}") for n in range(10)}


class Keyboard:
    """Builds the event stream of one device: each key a press and a release, each followed by
    SYN_REPORT (and an EV_MSC scan code before it, as USB keyboards send), ``step`` seconds apart."""

    def __init__(self, t: float = 1000.0, step: float = 0.004) -> None:
        self.t = t
        self.step = step
        self.events: list[InputEvent] = []

    def _at(self, type_: int, code: int, value: int) -> InputEvent:
        return InputEvent(int(self.t), round(self.t % 1 * 1_000_000), type_, code, value)

    def key(self, code: int, value: int) -> Keyboard:
        self.events += [
            self._at(e.EV_MSC, e.MSC_SCAN, 0x70000 + code),
            self._at(e.EV_KEY, code, value),
            self._at(e.EV_SYN, e.SYN_REPORT, 0),
        ]
        self.t += self.step
        return self

    def tap(self, *keys: int, held: tuple[int, ...] = ()) -> Keyboard:
        for code in keys:
            for mod in held:
                self.key(mod, 1)
            self.key(code, 1).key(code, 0)
            for mod in held:
                self.key(mod, 0)
        return self

    def digits(self, text: str, *, keypad: bool = False, held: tuple[int, ...] = ()) -> Keyboard:
        table = KEYPAD if keypad else MAIN_ROW
        return self.tap(*(table[d] for d in text), held=held)

    def enter(self, code: int = e.KEY_ENTER) -> Keyboard:
        return self.tap(code)

    def unsynced(self, code: int, value: int) -> Keyboard:
        """A key event with no SYN_REPORT after it: part of a packet the kernel cut short."""
        self.events.append(self._at(e.EV_KEY, code, value))
        self.t += self.step
        return self

    def pause(self, seconds: float) -> Keyboard:
        self.t += seconds
        return self

    def syn(self, code: int) -> Keyboard:
        self.events.append(self._at(e.EV_SYN, code, 0))
        return self


def decode(events: list[InputEvent], decoder: KeyDecoder | None = None) -> list[bytes]:
    decoder = decoder or KeyDecoder("us")
    return [typed.raw for ev in events for typed in decoder.feed(ev)]


def test_main_row_digits_and_enter_make_one_valid_code():
    raws = decode(Keyboard().digits(CODE).enter().events)
    assert raws == [CODE.encode() + b"\n"]
    assert codes.parse(raws[0]).code == CODE


def test_keypad_digits_and_keypad_enter():
    raws = decode(Keyboard().digits(CODE, keypad=True).enter(e.KEY_KPENTER).events)
    assert raws == [CODE.encode() + b"\n"]
    assert codes.parse(raws[0]).valid


def test_repeated_digits_are_all_kept():
    raws = decode(Keyboard().digits("81111111111111111110").enter().events)
    assert raws == [b"81111111111111111110\n"]


def test_shift_gives_capitals_and_symbols():
    kb = Keyboard().tap(e.KEY_A, e.KEY_B, held=(e.KEY_LEFTSHIFT,)).tap(e.KEY_C).tap(e.KEY_1, held=(e.KEY_RIGHTSHIFT,))
    assert decode(kb.enter().events) == [b"ABc!\n"]


def test_caps_lock_toggles_letters_not_digits_and_shift_inverts_it():
    kb = Keyboard().tap(e.KEY_CAPSLOCK).tap(e.KEY_A, e.KEY_1).tap(e.KEY_B, held=(e.KEY_LEFTSHIFT,)).tap(e.KEY_CAPSLOCK)
    assert decode(kb.tap(e.KEY_C).enter().events) == [b"A1bc\n"]


def test_autorepeat_events_add_nothing():
    kb = Keyboard().key(e.KEY_8, 1)
    kb.events.append(InputEvent(1000, 2000, e.EV_KEY, e.KEY_8, 2))
    assert decode(kb.key(e.KEY_8, 0).enter().events) == [b"8\n"]


def test_enter_alone_is_not_a_scan():
    assert decode(Keyboard().enter().enter(e.KEY_KPENTER).events) == []


def test_german_layout():
    kb = Keyboard().tap(e.KEY_Y, e.KEY_Z).tap(e.KEY_7, held=(e.KEY_LEFTSHIFT,)).tap(e.KEY_Q, held=(e.KEY_RIGHTALT,))
    kb.tap(e.KEY_MINUS, e.KEY_SEMICOLON)
    assert decode(kb.enter().events, KeyDecoder("de")) == ["zy/@ßö\n".encode()]


def test_french_layout_digits_need_shift():
    events = Keyboard().digits(CODE, held=(e.KEY_LEFTSHIFT,)).enter().events
    raws = decode(events, KeyDecoder("fr"))
    assert raws == [CODE.encode() + b"\n"]
    assert codes.parse(raws[0]).valid
    # The same keys read with the wrong layout are not a code: the field's
    # "scanner country vs host layout" garbling, caught rather than accepted.
    wrong = decode(events, KeyDecoder("us"))
    assert codes.parse(wrong[0]).reason == "not_numeric"


def test_french_unshifted_row_and_letters():
    kb = (
        Keyboard()
        .tap(e.KEY_1, e.KEY_2, e.KEY_Q, e.KEY_A, e.KEY_SEMICOLON, e.KEY_M)
        .tap(e.KEY_0, held=(e.KEY_RIGHTALT,))
    )
    assert decode(kb.enter().events, KeyDecoder("fr")) == ["&éaqm,@\n".encode()]


def test_keys_the_layout_cannot_produce_make_a_not_text_read():
    # F5, and the German dead key ´ (KEY_EQUAL), give no character: the read
    # keeps a marker in their place and the code check refuses it as not_text.
    decoder = KeyDecoder("de")
    kb = Keyboard().digits(CODE[:10]).tap(e.KEY_F5, e.KEY_EQUAL).digits(CODE[10:]).enter()
    typed = [t for ev in kb.events for t in decoder.feed(ev)]
    assert len(typed) == 1
    assert typed[0].raw.count(UNMAPPED) == 2
    assert typed[0].unmapped == ("KEY_F5", "KEY_EQUAL")
    assert codes.parse(typed[0].raw).reason == "not_text"
    assert codes.parse(UNMAPPED).reason == "not_text"


def test_ctrl_bracket_and_alt_keypad_give_gs_for_gs1_codes():
    # ]d2 then (01)GTIN (21)serial GS (17)expiry, the GS typed two ways scanners do it.
    gtin, serial = "06901234567892", "ABC123"
    kb = Keyboard().tap(e.KEY_RIGHTBRACE).tap(e.KEY_D).tap(e.KEY_2).digits("01" + gtin + "21")
    kb.tap(e.KEY_A, e.KEY_B, e.KEY_C, held=(e.KEY_LEFTSHIFT,)).digits("123")
    kb.tap(e.KEY_RIGHTBRACE, held=(e.KEY_LEFTCTRL,)).digits("17270101").enter()
    raw = decode(kb.events)[0]
    assert raw == f"]d201{gtin}21{serial}\x1d17270101\n".encode()
    parsed = codes.parse(raw, accept_gs1=True)
    assert (parsed.kind, parsed.serial, parsed.expiry) == ("gs1", serial, "270101")

    kb = Keyboard().key(e.KEY_LEFTALT, 1).digits("029", keypad=True).key(e.KEY_LEFTALT, 0)
    assert decode(Keyboard().digits("12").events + kb.events + Keyboard(t=1000.1).digits("3").enter().events) == [
        b"12\x1d3\n"
    ]


def test_syn_dropped_mid_code_discards_the_partial_scan_and_resyncs():
    decoder = KeyDecoder("us")
    kb = Keyboard().digits(CODE[:9])
    kb.syn(e.SYN_DROPPED)
    # Up to the next SYN_REPORT the stream is not to be trusted: these keys are ignored.
    kb.unsynced(e.KEY_5, 1).unsynced(e.KEY_5, 0).unsynced(e.KEY_6, 1).unsynced(e.KEY_6, 0)
    kb.syn(e.SYN_REPORT)
    kb.digits(CODE[11:]).enter()  # the rest of the broken scan
    kb.digits(CODE).enter()  # the operator scans again
    raws = decode(kb.events, decoder)
    assert raws == [CODE[11:].encode() + b"\n", CODE.encode() + b"\n"]
    assert codes.parse(raws[0]).reason == "wrong_length"
    assert codes.parse(raws[1]).valid
    assert decoder.discarded == 1


def test_syn_dropped_forgets_a_held_shift_until_resync():
    decoder = KeyDecoder("us")
    kb = Keyboard().key(e.KEY_LEFTSHIFT, 1).syn(e.SYN_DROPPED).key(e.KEY_LEFTSHIFT, 0)
    decode(kb.events, decoder)
    assert decoder.needs_resync
    decoder.resync([e.KEY_LEFTSHIFT])  # the device says shift is still down
    assert decode(Keyboard(t=1001).tap(e.KEY_A).enter().events, decoder) == [b"A\n"]
    decoder.resync([])
    assert decode(Keyboard(t=1002).tap(e.KEY_A).enter().events, decoder) == [b"a\n"]


def test_a_gap_longer_than_the_key_timeout_ends_the_read():
    decoder = KeyDecoder("us", key_timeout=0.1)
    kb = Keyboard().digits(CODE[:11]).pause(0.15).digits(CODE[11:]).enter()
    raws = decode(kb.events, decoder)
    assert raws == [CODE[:11].encode(), CODE[11:].encode() + b"\n"]
    assert [codes.parse(r).reason for r in raws] == ["wrong_length", "wrong_length"]


def test_a_gap_within_the_key_timeout_does_not():
    decoder = KeyDecoder("us", key_timeout=0.1)
    kb = Keyboard().digits(CODE[:12]).pause(0.05).digits(CODE[12:]).enter()
    assert decode(kb.events, decoder) == [CODE.encode() + b"\n"]


def test_expire_ends_a_read_that_stops_without_enter():
    decoder = KeyDecoder("us", key_timeout=0.1)
    kb = Keyboard(t=500.0).digits("8123")
    assert decode(kb.events, decoder) == []
    last = [ev for ev in kb.events if ev.type == e.EV_KEY and ev.value == 1][-1].timestamp()
    assert decoder.deadline() == last + 0.1
    assert decoder.expire(last + 0.05) is None
    typed = decoder.expire(last + 0.2)
    assert typed.raw == b"8123"
    assert typed.t_first == kb.events[1].timestamp()
    assert decoder.deadline() is None


def test_tab_terminates_only_when_configured():
    events = Keyboard().digits(CODE).tap(e.KEY_TAB).events
    assert decode(events, KeyDecoder("us", tab_terminates=True)) == [CODE.encode() + b"\t"]
    assert decode(events, KeyDecoder("us")) == []
    mid = Keyboard().digits("8123").tap(e.KEY_TAB).digits("4").enter().events
    assert codes.parse(decode(mid)[0]).reason == "not_text"


def test_two_devices_interleaved_in_time_each_keep_their_own_scan():
    a, b = KeyDecoder("us"), KeyDecoder("us")
    other = "81234567890123450000"
    stream_a = Keyboard(t=1000.0, step=0.004).digits(CODE).enter().events
    stream_b = Keyboard(t=1000.002, step=0.004).digits(other).enter().events
    tagged = [("a", ev) for ev in stream_a] + [("b", ev) for ev in stream_b]
    merged = sorted(tagged, key=lambda item: item[1].timestamp())
    keys = [who for who, ev in merged if ev.type == e.EV_KEY]
    assert keys[:6] == ["a", "b", "a", "b", "a", "b"]  # really interleaved
    out = {"a": [], "b": []}
    for who, ev in merged:
        out[who] += [t.raw for t in (a if who == "a" else b).feed(ev)]
    assert out == {"a": [CODE.encode() + b"\n"], "b": [other.encode() + b"\n"]}


def test_times_are_first_and_last_key():
    kb = Keyboard(t=2000.0, step=0.01).digits("81").enter()
    decoder = KeyDecoder("us")
    typed = [t for ev in kb.events for t in decoder.feed(ev)]
    assert typed[0].t_first == kb.events[1].timestamp()
    assert typed[0].t_last == max(ev.timestamp() for ev in kb.events if ev.type == e.EV_KEY and ev.value == 1)
