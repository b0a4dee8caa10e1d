"""MQTT 3.1.1 packets as bytes: encoding the few a publisher sends, framing what arrives.

No sockets here: :func:`frame_packets` takes whatever bytes a read produced and returns the
complete packets at its front, so it is tested byte by byte (split anywhere, garbage, huge
lengths) without a broker, as h11's codec is.
"""

from __future__ import annotations

from dataclasses import dataclass

# A received message: topic, payload, receipt time (UTC ns) and the packet id to acknowledge
# once it is durable (0: nothing to acknowledge, QoS 0).
RawMessage = tuple[str, bytes, int, int]

KEEPALIVE_S = 30
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


def encode_remaining_length(length: int) -> bytes:
    """MQTT's variable-length integer: 7 bits per byte, high bit = more follows."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _mqtt_string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def connect_packet(
    client_id: str,
    username: str | None,
    password: str | None,
    *,
    clean_session: bool = True,
    keepalive_s: int = KEEPALIVE_S,
) -> bytes:
    flags = 0x02 if clean_session else 0x00
    payload = _mqtt_string(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password.encode())
    variable = _mqtt_string(b"MQTT") + bytes([4, flags]) + keepalive_s.to_bytes(2, "big")
    body = variable + payload
    return b"\x10" + encode_remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH; ``topic`` is the raw UTF-8 topic name."""
    remaining = 2 + len(topic) + len(payload)
    return b"\x30" + encode_remaining_length(remaining) + _mqtt_string(topic) + payload


@dataclass(slots=True)
class Framed:
    """What :func:`frame_packets` took from a buffer."""

    messages: list[RawMessage]  # QoS 0 PUBLISH packets as (topic, payload, receipt)
    passthrough: bytearray  # every other complete packet, byte for byte
    oversize: int  # PUBLISH packets with a payload over the limit, dropped
    bad_topics: int  # PUBLISH packets whose topic is not UTF-8, dropped


def frame_packets(buf: bytearray, limit: int, receipt_ns: int) -> Framed:
    """Take every complete MQTT 3.1.1 packet off the front of ``buf`` (the rest stays for the
    next read): QoS 0 PUBLISH packets become messages, the others pass through untouched."""
    n = len(buf)
    pos = 0
    framed = Framed([], bytearray(), 0, 0)
    messages, passthrough = framed.messages, framed.passthrough
    view = memoryview(buf)
    try:
        while pos < n:
            header = buf[pos]
            # Remaining length: 1-4 bytes, 7 bits each, least significant first.
            i = pos + 1
            length = 0
            shift = 0
            complete = False
            while i < n and shift <= 21:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    complete = True
                    break
                shift += 7
            if not complete:
                if shift > 21:  # a fifth length byte is not MQTT: let the client report it
                    passthrough += view[pos:]
                    pos = n
                break  # otherwise the length itself is still incomplete
            end = i + length
            if end > n:
                break
            if header & 0xF6 == 0x30 and length >= 2:  # PUBLISH, QoS 0 (any DUP/RETAIN)
                topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
                if end - topic_end > limit:
                    framed.oversize += 1
                else:
                    try:
                        topic = str(view[i + 2 : topic_end], "utf-8")
                    except UnicodeDecodeError:
                        framed.bad_topics += 1
                    else:
                        messages.append((topic, bytes(view[topic_end:end]), receipt_ns, 0))
            else:
                passthrough += view[pos:end]
            pos = end
    finally:
        view.release()
    del buf[:pos]
    return framed
