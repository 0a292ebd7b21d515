"""Why a connection ended, judged without a broker: takeovers, oversized messages, losses."""

from __future__ import annotations

from edge_agent.reporting.session_watch import (
    PACKET_TOO_LARGE,
    SESSION_TAKEN_OVER,
    UNSPECIFIED,
    DropKind,
    Sent,
    SessionWatch,
    publish_packet_size,
)

SERVER_SHUTTING_DOWN = 0x8B


def _watch(v5: bool = True) -> SessionWatch:
    return SessionWatch(client_id="edge-agent-gw", broker="b:1883", v5=v5)


def test_mqtt5_session_taken_over_is_named_at_once() -> None:
    w = _watch()
    w.connected(100.0, None)
    v = w.dropped(101.0, 5000.0, SESSION_TAKEN_OVER, "Session taken over", by_us=False, inflight=[])
    assert v.kind is DropKind.TAKEOVER
    assert "another client uses this client id (edge-agent-gw)" in v.message
    assert "is device_id unique?" in v.message
    assert not v.reset_backoff
    assert w.takeovers == 1
    assert w.last_takeover == 5000.0


def test_repeated_drops_right_after_connect_are_a_takeover_on_mqtt311() -> None:
    w = _watch(v5=False)
    kinds = []
    for i in range(3):
        w.connected(100.0 + 10 * i, None)
        v = w.dropped(101.0 + 10 * i, 0.0, UNSPECIFIED, "Unspecified error", by_us=False,
                      inflight=[])  # fmt: skip
        kinds.append(v.kind)
        assert not v.reset_backoff
    assert kinds == [DropKind.SHORT, DropKind.TAKEOVER, DropKind.TAKEOVER]


def test_a_stable_connection_lost_resets_the_backoff_and_is_no_takeover() -> None:
    w = _watch(v5=False)
    w.connected(0.0, None)
    w.dropped(1.0, 0.0, UNSPECIFIED, "Unspecified error", by_us=False, inflight=[])
    w.connected(10.0, None)
    v = w.dropped(100.0, 0.0, UNSPECIFIED, "Unspecified error", by_us=False, inflight=[])
    assert v.kind is DropKind.LOST
    assert v.reset_backoff
    w.connected(110.0, None)
    v = w.dropped(111.0, 0.0, UNSPECIFIED, "Unspecified error", by_us=False, inflight=[])
    assert v.kind is DropKind.SHORT  # the count started again


def test_a_broker_that_says_why_is_an_ordinary_loss() -> None:
    w = _watch()
    for i in range(3):
        w.connected(10.0 * i, None)
        v = w.dropped(10.0 * i + 1, 0.0, SERVER_SHUTTING_DOWN, "Server shutting down",
                      by_us=False, inflight=[Sent(1, 500, 10.0 * i + 0.5)])  # fmt: skip
        assert v.kind is DropKind.LOST
        assert not v.set_aside
    assert w.takeovers == 0


def test_packet_too_large_sets_the_first_unacked_message_aside_and_learns_the_limit() -> None:
    w = _watch()
    w.connected(0.0, None)
    inflight = [Sent(7, 300, 0.1), Sent(8, 120, 0.1), Sent(9, 400, 0.1)]
    v = w.dropped(0.2, 0.0, PACKET_TOO_LARGE, "Packet too large", by_us=False, inflight=inflight)
    assert v.kind is DropKind.TOO_LARGE
    assert [s.mid for s in v.set_aside] == [7, 9]  # 9 is larger than what failed
    assert w.limit == 299
    assert w.too_large(300)
    assert not w.too_large(299)


def test_mqtt311_message_that_closes_the_connection_twice_is_set_aside() -> None:
    w = _watch(v5=False)
    big = Sent(3, 250, 0.0)
    w.connected(0.0, None)
    v1 = w.dropped(0.1, 0.0, UNSPECIFIED, "Unspecified error", by_us=False, inflight=[big])
    assert v1.kind is DropKind.SHORT
    assert "250-byte" in v1.message
    assert not v1.set_aside
    w.connected(2.0, None)
    resent = Sent(3, 250, 2.0)  # a persistent session re-sends it after CONNACK
    v2 = w.dropped(2.1, 0.0, UNSPECIFIED, "Unspecified error", by_us=False, inflight=[resent])
    assert v2.kind is DropKind.TOO_LARGE
    assert v2.set_aside == (resent,)
    assert w.takeovers == 0


def test_mqtt311_a_retained_message_replaced_by_a_newer_one_keeps_its_strike() -> None:
    # The birth (retained) is blamed for the first drop; the next connect carries a newer
    # birth (another mid, one byte longer) and a larger message queued meanwhile. The
    # newer birth inherits the strike: the second drop sets it aside and learns a limit
    # that also rules out the larger one, instead of starting a count for it.
    w = _watch(v5=False)
    w.connected(0.0, None)
    v1 = w.dropped(0.1, 0.0, UNSPECIFIED, "", by_us=False,
                   inflight=[Sent(1, 554, 0.0, "edge/gw/status"), Sent(2, 90, 0.0)])  # fmt: skip
    assert not v1.set_aside
    w.connected(2.0, None)
    birth = Sent(5, 555, 2.0, "edge/gw/status")
    big = Sent(6, 718, 2.0)
    v2 = w.dropped(2.1, 0.0, UNSPECIFIED, "", by_us=False, inflight=[birth, big])
    assert v2.kind is DropKind.TOO_LARGE
    assert set(v2.set_aside) == {birth, big}
    assert w.limit == 554


def test_mqtt311_an_unblamed_message_does_not_outrank_the_largest() -> None:
    w = _watch(v5=False)
    w.connected(0.0, None)
    w.dropped(0.1, 0.0, UNSPECIFIED, "", by_us=False, inflight=[Sent(1, 500, 0.0)])
    w.connected(2.0, None)
    # 1 (blamed) is acknowledged meanwhile; 2 was in flight but never the largest
    v = w.dropped(2.1, 0.0, UNSPECIFIED, "", by_us=False,
                  inflight=[Sent(2, 100, 2.0), Sent(3, 800, 2.0)])  # fmt: skip
    assert not v.set_aside
    assert "800-byte" in v.message


def test_once_the_limit_is_learned_one_drop_after_a_larger_message_suffices() -> None:
    w = _watch(v5=False)
    w.connected(0.0, None)
    w.acked(150)
    w.dropped(0.1, 0.0, PACKET_TOO_LARGE, "", by_us=False, inflight=[Sent(1, 300, 0.0)])
    w.connected(1.0, None)
    v = w.dropped(1.1, 0.0, UNSPECIFIED, "", by_us=False, inflight=[Sent(2, 280, 1.0)])
    assert v.kind is DropKind.TOO_LARGE
    assert w.limit == 279


def test_a_message_no_larger_than_one_the_broker_took_is_not_blamed_on_size() -> None:
    w = _watch(v5=False)
    w.acked(500)
    for t in (0.0, 2.0):
        w.connected(t, None)
        v = w.dropped(t + 0.1, 0.0, UNSPECIFIED, "", by_us=False, inflight=[Sent(4, 200, t)])
    assert v.kind is DropKind.TOO_LARGE
    assert "not for its size" in v.message
    assert w.limit is None


def test_announced_maximum_packet_size_is_the_limit() -> None:
    w = _watch()
    w.connected(0.0, 200)
    assert w.too_large(201)
    assert not w.too_large(200)


def test_closed_during_connect_leaves_the_reason() -> None:
    v = _watch().dropped(1.0, 0.0, UNSPECIFIED, "Unspecified error", by_us=False, inflight=[])
    assert v.kind is DropKind.DURING_CONNECT
    assert "closed the connection during connect" in v.message


def test_our_own_disconnect_says_nothing() -> None:
    w = _watch()
    w.connected(0.0, None)
    v = w.dropped(1.0, 0.0, 0, "Normal disconnection", by_us=True, inflight=[])
    assert v.kind is DropKind.STOPPED
    assert v.message == ""


def test_publish_packet_size_counts_header_topic_id_and_properties() -> None:
    # 1 fixed header + 1 length byte + (2 + 5 topic) + 2 packet id + 10 payload
    assert publish_packet_size("a/b/c", 10, properties_len=None) == 21
    assert publish_packet_size("a/b/c", 10, properties_len=1) == 22
    assert publish_packet_size("t", 200, properties_len=1) == 1 + 2 + 2 + 1 + 2 + 1 + 200
