"""Unit tests of the coap-edge's device security helpers: the DTLS record inspection that
finds the PSK identity before tinydtls asks for its key, the choice of key during a rotation,
and the OSCORE context's sender sequence numbers (reserved in blocks)."""

from __future__ import annotations

import pytest
from aiocoap import oscore

from msgin5g.v1 import registry_pb2 as rpb
from msgin5g_coap_edge.dtls import Handshake, inspect
from msgin5g_coap_edge.security import (
    OSCORE_SEQUENCE_BLOCK,
    DeviceClaim,
    DeviceOscoreContext,
    PskEntry,
    claimed_ue,
)


def record(kind: int, epoch: int, body: bytes) -> bytes:
    return (
        bytes([kind, 0xFE, 0xFD])
        + epoch.to_bytes(2, "big")
        + (7).to_bytes(6, "big")
        + len(body).to_bytes(2, "big")
        + body
    )


def handshake(kind: int, body: bytes) -> bytes:
    n = len(body).to_bytes(3, "big")
    return bytes([kind]) + n + (1).to_bytes(2, "big") + (0).to_bytes(3, "big") + n + body


def key_exchange(identity: bytes) -> bytes:
    return record(22, 0, handshake(16, len(identity).to_bytes(2, "big") + identity))


def test_the_psk_identity_is_read_from_a_client_key_exchange() -> None:
    flight = key_exchange(b"ue-1") + record(20, 0, b"\x01") + record(22, 1, b"\x00" * 40)
    assert inspect(flight) == Handshake(client_hello=False, identity=b"ue-1", finished=True)
    assert inspect(key_exchange(b"ue-1")) == Handshake(identity=b"ue-1")


def test_a_client_hello_and_other_records_are_told_apart() -> None:
    hello = record(22, 0, handshake(1, b"\xfe\xfd" + b"\x00" * 40))
    assert inspect(hello) == Handshake(client_hello=True)
    assert inspect(record(23, 1, b"\x00" * 30)) == Handshake()  # application data
    assert inspect(record(22, 1, b"\x00" * 30)) == Handshake(finished=True)


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x16\xfe",
        record(22, 0, b"\x10\x00"),  # a handshake header cut short
        record(22, 0, handshake(16, b"\x00\x09ue")),  # identity longer than the body
        key_exchange(b"ue-1")[:-2],  # record cut short
    ],
)
def test_broken_records_say_nothing_and_never_raise(datagram: bytes) -> None:
    assert inspect(datagram).identity is None


def entry(*keys: tuple[bytes, int | None]) -> PskEntry:
    return PskEntry(ue_svc_id="ue", generation=2, keys=list(keys), fetched=0.0)


def test_the_current_key_is_offered_unless_another_worked_last() -> None:
    e = entry((b"new", None), (b"old", 2_000))
    assert e.choose(1_000) == (b"new", None)
    e.last_good = b"old"
    assert e.choose(1_000) == (b"old", 2_000)
    # After its grace the old key is never offered.
    assert e.choose(3_000) == (b"new", None)


def test_after_a_failed_handshake_the_other_key_is_offered() -> None:
    e = entry((b"new", None), (b"old", 2_000))
    e.last_good, e.last_bad = b"old", b"old"
    assert e.choose(1_000) == (b"new", None)
    e.last_bad = b"new"
    assert e.choose(1_000) == (b"old", 2_000)
    # With one key left, that one (the device may have been wrong once).
    assert entry((b"only", None)).choose(1_000) == (b"only", None)
    assert entry((b"gone", 500)).choose(1_000) is None


def oscore_key(start: int, end: int) -> rpb.OscoreKey:
    return rpb.OscoreKey(
        master_secret=bytes(16),
        master_salt=bytes(8),
        device_id=b"\x07" * 7,
        server_id=b"\x01",
        sequence_start=start,
        sequence_end=end,
    )


def test_the_oscore_context_uses_only_its_reserved_sequence_numbers() -> None:
    asked: list[DeviceOscoreContext] = []
    block = OSCORE_SEQUENCE_BLOCK
    context = DeviceOscoreContext("ue-1", 3, oscore_key(block, 2 * block), asked.append)
    assert context.sender_id == b"\x01"
    assert context.recipient_id == b"\x07" * 7
    assert (
        claimed_ue(type("Remote", (), {"authenticated_claims": context.authenticated_claims}))
        == "ue-1"
    )
    numbers = [context.new_sequence_number() for _ in range(block * 3 // 4)]
    assert numbers == list(range(block, block + block * 3 // 4))
    assert asked == [context] * len(asked)
    assert asked  # a new block was asked for when a quarter was left
    # A block reserved meanwhile moves the context past the numbers between the blocks.
    context.take_block(5 * block, 6 * block)
    assert context.new_sequence_number() == 5 * block
    # An old reply (a block below the current numbers) changes nothing.
    context.take_block(3 * block, 4 * block)
    assert context.new_sequence_number() == 5 * block + 1


def test_a_context_out_of_numbers_refuses_to_protect() -> None:
    asked: list[DeviceOscoreContext] = []
    context = DeviceOscoreContext("ue-1", 1, oscore_key(10, 11), asked.append)
    assert context.new_sequence_number() == 10
    with pytest.raises(oscore.ContextUnavailable):
        context.new_sequence_number()
    assert asked


def test_only_device_claims_name_a_ue() -> None:
    class Remote:
        authenticated_claims: list[object] = []

    assert claimed_ue(Remote()) is None
    Remote.authenticated_claims = [":some-psk-key", DeviceClaim("ue-9", "dtls-psk", 1)]
    assert claimed_ue(Remote()) == "ue-9"
    assert claimed_ue(object()) is None
