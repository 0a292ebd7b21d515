"""Why did the broker end our connection? Pure judgement, time passed in.

Two faults look alike from the client's side and must not turn into a reconnect storm:

- **Session takeover**: another client connected with our client id (two gateways with
  one device_id). MQTT 5 brokers say so (DISCONNECT reason 0x8E); a 3.1.1 broker just
  closes the socket, right after it accepted us, again and again.
- **A message larger than the broker accepts**: MQTT 5 brokers announce their Maximum
  Packet Size in the CONNACK and disconnect with 0x95 when it is exceeded; a 3.1.1
  broker closes the socket right after the message. Re-sending it on every connect
  would fail for ever, so the message is set aside and the rest flows.

`SessionWatch` is told about connects and drops and answers with a `DropVerdict`: what
to report, which in-flight messages to set aside, and whether the connection had been
stable (only then does the reconnect backoff start again from its minimum).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "PACKET_TOO_LARGE",
    "SESSION_TAKEN_OVER",
    "DropVerdict",
    "Sent",
    "SessionWatch",
    "publish_packet_size",
    "takeover_message",
]

# MQTT 5 reason codes (DISCONNECT / PUBACK).
SESSION_TAKEN_OVER = 0x8E
UNSPECIFIED = 0x80  # also what paho reports when a 3.1.1 broker just closes the socket
PACKET_TOO_LARGE = 0x95

# A connection that lasted this long was fine: its end says nothing about us.
STABLE_AFTER_S = 30.0
# A 3.1.1 broker closes the socket within this long after an oversized message.
BLAME_WINDOW_S = 2.0
# Drops right after one message / right after connecting before we draw a conclusion.
STRIKES = 2


def takeover_message(client_id: str) -> str:
    return f"another client uses this client id ({client_id}) (is device_id unique?)"


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def publish_packet_size(topic: str, payload_len: int, *, properties_len: int | None) -> int:
    """Bytes of a QoS 1 PUBLISH packet on the wire, as a broker's maximum packet size counts
    them. `properties_len`: the packed MQTT 5 properties including their length prefix
    (None for MQTT 3.1.1)."""
    remaining = 2 + len(topic.encode("utf-8")) + 2 + payload_len
    if properties_len is not None:
        remaining += properties_len
    return 1 + _varint_len(remaining) + remaining


@dataclass(frozen=True)
class Sent:
    """A QoS 1 message handed to the broker and not yet acknowledged."""

    mid: int
    size: int  # packet bytes
    at: float  # when it was (last) written, monotonic s
    # what a drop's blame sticks to: the topic of a retained message (a newer one to it
    # replaces the older, so it inherits the suspicion), else None: the mid
    key: str | None = None

    @property
    def suspect(self) -> str | int:
        return self.mid if self.key is None else self.key


class DropKind(str, enum.Enum):
    STOPPED = "stopped"  # we disconnected
    DURING_CONNECT = "during_connect"
    TAKEOVER = "takeover"
    TOO_LARGE = "too_large"
    SHORT = "short"  # closed soon after connecting, cause not known (yet)
    LOST = "lost"  # an ordinary loss after a stable connection


@dataclass(frozen=True)
class DropVerdict:
    kind: DropKind
    message: str  # for the log and status; "" when there is nothing to say
    set_aside: tuple[Sent, ...] = ()  # in-flight messages never to be sent again
    reset_backoff: bool = False


@dataclass
class SessionWatch:
    """Follows one link's connections. Not thread-safe: the link calls it under its lock."""

    client_id: str
    broker: str
    v5: bool
    stable_after_s: float = STABLE_AFTER_S
    limit: int | None = None  # the broker's maximum packet size, announced or learned
    takeovers: int = 0
    last_takeover: float | None = None  # wall-clock time of the last one
    _connected_at: float | None = field(default=None, init=False)
    _largest_acked: int = field(default=0, init=False)  # the broker took this size
    _short_drops: int = field(default=0, init=False)
    _strikes: dict[str | int, int] = field(default_factory=dict, init=False)

    def connected(self, now: float, max_packet_size: int | None) -> None:
        """A successful CONNACK; `max_packet_size` as announced (MQTT 5), else None."""
        self._connected_at = now
        if max_packet_size:
            self.limit = max_packet_size

    def too_large(self, size: int) -> bool:
        return self.limit is not None and size > self.limit

    def acked(self, size: int) -> None:
        """The broker acknowledged a message of `size` bytes: its limit is at least that."""
        self._largest_acked = max(self._largest_acked, size)

    def dropped(  # noqa: PLR0911 - one return per cause
        self,
        now: float,
        wall: float,
        reason: int,
        reason_name: str,
        *,
        by_us: bool,
        inflight: Sequence[Sent],
    ) -> DropVerdict:
        """The connection ended. `reason`: the MQTT 5 reason code (or paho's for 3.1.1);
        `inflight`: unacknowledged messages, oldest first. A 3.1.1 drop right after
        messages were written blames the largest of them; the same one blamed twice (or
        once, when the broker is known to drop large messages) is set aside."""
        started, self._connected_at = self._connected_at, None
        if by_us:
            return DropVerdict(DropKind.STOPPED, "")
        if started is None:
            return DropVerdict(
                DropKind.DURING_CONNECT,
                f"broker {self.broker} closed the connection during connect: {reason_name}",
            )
        if reason == SESSION_TAKEN_OVER:
            return self._takeover(wall, "the broker handed our session to a new connection")
        if reason == PACKET_TOO_LARGE and inflight:
            return self._too_large(inflight[0], inflight, announced=True)
        stable = now - started >= self.stable_after_s
        if stable:
            self._short_drops = 0
            self._strikes.clear()
        if stable or reason != UNSPECIFIED:
            # a stable connection lost, or the broker said why (shutting down, ...)
            return DropVerdict(
                DropKind.LOST,
                f"lost the connection to {self.broker}: {reason_name}",
                reset_backoff=stable,
            )
        # Closed soon after connecting, no reason given (MQTT 3.1.1 brokers give none).
        recent = [s for s in inflight if now - s.at <= BLAME_WINDOW_S]
        if recent:
            # The largest is the suspect: if size is the problem, it fails first. (Not
            # "the first unacked": a broker that closes on unread data resets the socket,
            # and the PUBACKs it sent just before are lost with it.) One blamed before and
            # in flight again is preferred: it was the largest then, and a drop right after
            # it twice is what sets it aside (a larger one queued since would otherwise
            # start its own count, and cost a connection more).
            again = [s for s in recent if self._strikes.get(s.suspect, 0) > 0]
            first = max(again or recent, key=lambda s: s.size)
            self._strikes[first.suspect] = self._strikes.get(first.suspect, 0) + 1
            # Once the broker is known to drop large messages, one drop after a message
            # larger than any it took is enough.
            learned = self.limit is not None and first.size > self._largest_acked
            if self._strikes[first.suspect] >= STRIKES or learned:
                return self._too_large(first, inflight, announced=False)
            return DropVerdict(
                DropKind.SHORT,
                f"broker {self.broker} closed the connection right after a "
                f"{first.size}-byte message: {reason_name}",
            )
        self._short_drops += 1
        if self._short_drops >= STRIKES:
            return self._takeover(
                wall,
                f"the broker closed the connection right after accepting it, "
                f"{self._short_drops} times in a row",
            )
        return DropVerdict(DropKind.SHORT, f"lost the connection to {self.broker}: {reason_name}")

    def _takeover(self, wall: float, how: str) -> DropVerdict:
        self.takeovers += 1
        self.last_takeover = wall
        return DropVerdict(DropKind.TAKEOVER, f"{takeover_message(self.client_id)}: {how}")

    def _too_large(
        self, culprit: Sent, inflight: Sequence[Sent], *, announced: bool
    ) -> DropVerdict:
        if culprit.size <= self._largest_acked:
            # not its size (the broker took larger ones): some other rule (an ACL?)
            self._strikes.pop(culprit.suspect, None)
            return DropVerdict(
                DropKind.TOO_LARGE,
                f"broker {self.broker} closed the connection each time a {culprit.size}-byte "
                "message was sent (not for its size; check the broker's ACL and log); "
                "set aside, not retried",
                set_aside=(culprit,),
            )
        # The broker refuses this size; anything at least as large will fail too.
        bound = culprit.size - 1
        self.limit = bound if self.limit is None else min(self.limit, bound)
        aside = tuple(s for s in inflight if s.size > self.limit)
        for s in aside:
            self._strikes.pop(s.suspect, None)
        how = (
            "the broker refused it (Packet too large)"
            if announced
            else "the broker closed the connection each time it was sent"
        )
        return DropVerdict(
            DropKind.TOO_LARGE,
            f"a {culprit.size}-byte message is larger than broker {self.broker} accepts ({how}); "
            f"{len(aside)} message(s) set aside, not retried",
            set_aside=aside,
        )
