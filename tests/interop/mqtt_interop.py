"""An MQTT interoperability run: 10 scenarios for MQTT 3.1.1 and 27 for MQTT 5.0.

Each scenario is written from the specifications' normative statements and
run with an independent client: Eclipse Paho's Python client (`paho-mqtt`,
pinned in requirements.txt) for what a client library does, and raw packets
built here for what no library lets a caller do (stay silent past the
keep-alive, leave a delivery unacknowledged, exceed the server's receive
maximum, use topic aliases by hand).

The scenario names follow the Eclipse Paho interoperability tests
(`paho.mqtt.testing`, `client_test.py` and `client_test5.py`), so the counts
can be read side by side with theirs. Where those tests check a choice the
standard leaves to the server (its own keep-alive of 60 s, aliases on the
way out), the scenario here checks what the standard requires and accepts
either permitted choice.

Every scenario runs in its own topic tree (`{root}/{scenario}/…`) with its
own client ids, so they run at the same time. Nothing waits a fixed time and
hopes: a scenario waits for a condition with a deadline; to show that
something did *not* arrive, it sends a marker that must arrive after it and
waits for the marker.

    python mqtt_interop.py --port 1883 --root interop --nosubscribe FILTER

prints one JSON line per scenario and a last line with the totals
(`INTEROP_DEADLINE`, seconds, bounds every wait; 30 unless set).
"""

import argparse
import json
import os
import socket
import struct
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

# Seconds a condition is waited for (never a time that is hoped to be
# enough): generous by default; a reference run may ask for less.
DEADLINE = float(os.environ.get("INTEROP_DEADLINE", "30"))

# --------------------------------------------------------------------------
# Raw packets (MQTT 3.1.1 §2, MQTT 5.0 §2)
# --------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# property id -> (name, wire type) for the properties used here (MQTT 5.0 §2.2.2.2)
PROPERTY_TYPES = {
    0x01: ("payload_format", "byte"),
    0x02: ("message_expiry", "u32"),
    0x03: ("content_type", "utf8"),
    0x08: ("response_topic", "utf8"),
    0x09: ("correlation_data", "binary"),
    0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry", "u32"),
    0x12: ("assigned_client_id", "utf8"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("authentication_method", "utf8"),
    0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay", "u32"),
    0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "utf8"),
    0x1C: ("server_reference", "utf8"),
    0x1F: ("reason_string", "utf8"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
PROPERTY_IDS = {name: (pid, kind) for pid, (name, kind) in PROPERTY_TYPES.items()}


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s):
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def properties(props):
    """MQTT 5 properties from a dict (a list value repeats the property)."""
    body = bytearray()
    for name, value in (props or {}).items():
        pid, kind = PROPERTY_IDS[name]
        for one in value if isinstance(value, list) else [value]:
            body.append(pid)
            if kind == "byte":
                body.append(one)
            elif kind == "u16":
                body += struct.pack("!H", one)
            elif kind == "u32":
                body += struct.pack("!I", one)
            elif kind == "varint":
                body += varint(one)
            elif kind in ("utf8", "binary"):
                body += utf8(one)
            elif kind == "pair":
                body += utf8(one[0]) + utf8(one[1])
    return varint(len(body)) + bytes(body)


def packet(kind, flags, body):
    return bytes([(kind << 4) | flags]) + varint(len(body)) + body


class Wire:
    """One raw MQTT connection: packets out, packets in, nothing automatic."""

    def __init__(self, port, v5):
        self.v5 = v5
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.buffer = b""

    def send(self, raw):
        self.sock.sendall(raw)

    def connect(self, client_id, keepalive=60, clean=True, props=None, will=None):
        flags = 0x02 if clean else 0
        payload = utf8(client_id)
        if will:
            topic, message, will_props = will
            flags |= 0x04
            if self.v5:
                payload += properties(will_props)
            payload += utf8(topic) + utf8(message)
        head = utf8("MQTT") + bytes([5 if self.v5 else 4, flags]) + struct.pack("!H", keepalive)
        if self.v5:
            head += properties(props)
        self.send(packet(CONNECT, 0, head + payload))
        return self.expect(CONNACK)

    def publish(self, topic, payload, qos=0, packet_id=1, retain=False, dup=False, props=None):
        body = utf8(topic)
        if qos:
            body += struct.pack("!H", packet_id)
        if self.v5:
            body += properties(props)
        body += payload
        self.send(packet(PUBLISH, (dup << 3) | (qos << 1) | int(retain), body))

    def subscribe(self, packet_id, filters, props=None):
        """`filters`: (filter, options byte) pairs; waits for the SUBACK."""
        body = struct.pack("!H", packet_id)
        if self.v5:
            body += properties(props)
        for topic_filter, options in filters:
            body += utf8(topic_filter) + bytes([options])
        self.send(packet(SUBSCRIBE, 0x02, body))
        return self.expect(SUBACK)

    def ack(self, kind, packet_id):
        self.send(packet(kind, 0x02 if kind == PUBREL else 0, struct.pack("!H", packet_id)))

    def disconnect(self, props=None):
        body = (b"\x00" + properties(props)) if (self.v5 and props) else b""
        self.send(packet(DISCONNECT, 0, body))
        self.sock.close()

    def close(self):
        self.sock.close()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def read(self, timeout=DEADLINE):
        """The next packet as a dict; ConnectionError when the server closed."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buffer) >= 2:
                length, shift, at = 0, 1, 1
                while at < len(self.buffer):
                    byte = self.buffer[at]
                    length += (byte & 0x7F) * shift
                    shift *= 128
                    at += 1
                    if not byte & 0x80:
                        break
                else:
                    self._fill()
                    continue
                if len(self.buffer) >= at + length:
                    first, body = self.buffer[0], self.buffer[at:at + length]
                    self.buffer = self.buffer[at + length:]
                    return self._parse(first >> 4, first & 0x0F, body)
            self._fill()

    def expect(self, kind, timeout=DEADLINE):
        got = self.read(timeout)
        if got["type"] != kind:
            raise AssertionError("expected packet %d, got %r" % (kind, got))
        return got

    def closed(self, timeout=DEADLINE):
        """True when the server ends the connection within `timeout`, reading
        (and keeping) whatever it sends first."""
        self.seen = []
        end = time.monotonic() + timeout
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.seen.append(self.read(left))
        except (ConnectionError, OSError) as cause:
            return not isinstance(cause, socket.timeout)

    @staticmethod
    def _varint(body, at):
        """The variable byte integer at `at`, and where it ends."""
        value, shift = 0, 1
        while True:
            byte = body[at]
            at += 1
            value += (byte & 0x7F) * shift
            shift *= 128
            if not byte & 0x80:
                return value, at

    def _props(self, body, at):
        length, at = self._varint(body, at)
        end, found = at + length, {}
        while at < end:
            pid = body[at]
            at += 1
            name, kind = PROPERTY_TYPES.get(pid, ("0x%02x" % pid, "byte"))
            if kind == "byte":
                value, at = body[at], at + 1
            elif kind == "u16":
                value, at = struct.unpack("!H", body[at:at + 2])[0], at + 2
            elif kind == "u32":
                value, at = struct.unpack("!I", body[at:at + 4])[0], at + 4
            elif kind == "varint":
                value, at = self._varint(body, at)
            else:
                n = struct.unpack("!H", body[at:at + 2])[0]
                value, at = bytes(body[at + 2:at + 2 + n]), at + 2 + n
                if kind == "pair":
                    m = struct.unpack("!H", body[at:at + 2])[0]
                    value, at = (value.decode(), bytes(body[at + 2:at + 2 + m]).decode()), at + 2 + m
                elif kind == "utf8":
                    value = value.decode()
            found.setdefault(name, []).append(value)
        return {k: (v if k in ("user_property", "subscription_identifier") else v[0])
                for k, v in found.items()}, end

    def _parse(self, kind, flags, body):
        got = {"type": kind, "flags": flags, "size": len(body)}
        if kind == CONNACK:
            got["session_present"] = bool(body[0] & 1)
            got["code"] = body[1]
            got["props"] = self._props(body, 2)[0] if self.v5 and len(body) > 2 else {}
        elif kind == PUBLISH:
            n = struct.unpack("!H", body[:2])[0]
            got["topic"], at = bytes(body[2:2 + n]).decode(), 2 + n
            got["qos"], got["dup"], got["retain"] = (flags >> 1) & 3, bool(flags & 8), bool(flags & 1)
            if got["qos"]:
                got["id"], at = struct.unpack("!H", body[at:at + 2])[0], at + 2
            got["props"], at = self._props(body, at) if self.v5 else ({}, at)
            got["payload"] = bytes(body[at:])
        elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
            got["id"] = struct.unpack("!H", body[:2])[0]
            got["code"] = body[2] if len(body) > 2 else 0
        elif kind == SUBACK:
            got["id"] = struct.unpack("!H", body[:2])[0]
            at = self._props(body, 2)[1] if self.v5 else 2
            got["codes"] = list(body[at:])
        elif kind == DISCONNECT:
            got["code"] = body[0] if body else 0
        return got


# --------------------------------------------------------------------------
# A library client that records what it is told
# --------------------------------------------------------------------------


class Peer:
    """A paho-mqtt client on its own network thread, recording every message,
    SUBACK and disconnect for the scenario to wait on. The peers of one
    scenario share `changed`, so a wait may look at any of them."""

    def __init__(self, port, client_id, v5, changed, clean=True, keepalive=60, props=None, will=None):
        self.port, self.v5 = port, v5
        self.messages, self.subacks, self.disconnects = [], {}, []
        self.changed = changed
        protocol = paho.MQTTv5 if v5 else paho.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, **kwargs)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        if will:
            topic, payload, qos, will_props = will
            self.client.will_set(topic, payload, qos, properties=will_props)
        self.connack = None
        self.clean, self.keepalive, self.props = clean, keepalive, props
        self.reconnect()

    def reconnect(self, clean=None):
        clean = self.clean if clean is None else clean
        with self.changed:
            self.connack = None
        if self.v5:
            self.client.connect("127.0.0.1", self.port, self.keepalive,
                                clean_start=clean, properties=self.props)
        else:
            self.client.connect("127.0.0.1", self.port, self.keepalive)
        self.client.loop_start()  # a network thread per connection
        self.wait("a CONNACK", lambda: self.connack is not None)
        return self.connack

    def _on_connect(self, client, userdata, flags, reason, props):
        with self.changed:
            self.connack = {"code": reason.value, "session_present": flags.session_present,
                            "props": props}
            self.changed.notify_all()

    def _on_message(self, client, userdata, message):
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, props):
        with self.changed:
            self.subacks[mid] = [r.value for r in reasons]
            self.changed.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, props):
        with self.changed:
            self.disconnects.append(reason.value)
            self.changed.notify_all()

    def wait(self, what, condition, timeout=DEADLINE):
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise AssertionError("timed out waiting for " + what)

    def subscribe(self, topic_filter, qos=2, props=None, **options):
        if self.v5:
            result, mid = self.client.subscribe(
                topic_filter, options=SubscribeOptions(qos=qos, **options), properties=props)
        else:
            result, mid = self.client.subscribe(topic_filter, qos)
        assert result == paho.MQTT_ERR_SUCCESS, result
        self.wait("a SUBACK", lambda: mid in self.subacks)
        return self.subacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        info = self.client.publish(topic, payload, qos, retain, properties=props)
        info.wait_for_publish(DEADLINE)
        assert info.is_published(), "not acknowledged: " + topic

    def received(self, topic=None):
        with self.changed:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def wait_messages(self, n, topic=None):
        self.wait("%d messages on %s" % (n, topic or "any topic"),
                  lambda: len([m for m in self.messages if topic is None or m.topic == topic]) >= n)
        return self.received(topic)

    def clear(self):
        with self.changed:
            self.messages.clear()

    def disconnect(self, props=None):
        self.client.disconnect(properties=props)
        self.wait("the disconnect", lambda: self.disconnects)
        self.client.loop_stop()
        self.disconnects.clear()

    def stop(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def publish_props(**values):
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def connect_props(**values):
    props = Properties(PacketTypes.CONNECT)
    for name, value in values.items():
        setattr(props, name, value)
    return props


# --------------------------------------------------------------------------
# The scenarios
# --------------------------------------------------------------------------


class Scenario:
    """One scenario's topic tree and client ids, and the clients to close."""

    def __init__(self, args, suite, name):
        self.port, self.suite, self.name = args.port, suite, name
        self.v5 = suite == "5.0"
        self.run_id = uuid.uuid4().hex[:6]
        self.root = "%s/%s/%s-%s" % (args.root, self.run_id, "v5" if self.v5 else "v3", name)
        self.nosubscribe = args.nosubscribe
        self.opened = []
        self.changed = threading.Condition()

    def topic(self, *levels):
        return "/".join((self.root,) + levels)

    def client_id(self, who):
        return "%s-%s-%s%s" % (who, self.name[:10], "5" if self.v5 else "3", self.run_id)

    def peer(self, who, **kwargs):
        peer = Peer(self.port, self.client_id(who), self.v5, self.changed, **kwargs)
        self.opened.append(peer)
        return peer

    def wire(self):
        wire = Wire(self.port, self.v5)
        self.opened.append(wire)
        return wire

    def close(self):
        for one in self.opened:
            try:
                one.stop() if isinstance(one, Peer) else one.close()
            except Exception:
                pass

    def marker(self, publisher, subscriber, topic):
        """Publish a marker on `topic` (which `subscriber` receives) and wait
        for it: what the publisher sent before it has been routed and (QoS 2,
        as the marker is) handed over."""
        body = uuid.uuid4().hex.encode()
        publisher.publish(topic, body, 2)
        subscriber.wait("the marker", lambda: any(m.payload == body for m in subscriber.messages))
        with subscriber.changed:
            subscriber.messages[:] = [m for m in subscriber.messages if m.payload != body]


SCENARIOS = []


def scenario(*suites):
    def register(fn):
        for suite in suites:
            SCENARIOS.append((suite, fn.__name__, fn))
        return fn
    return register


@scenario("3.1.1", "5.0")
def basic(s):
    """QoS 0, 1 and 2 reach a subscriber; a second CONNECT on a connection
    and an unknown protocol name close it ([MQTT-3.1.0-2], [MQTT-3.1.2-1])."""
    a = s.peer("a")
    a.disconnect()
    assert a.reconnect()["code"] == 0
    a.subscribe(s.topic("TopicA"))
    for qos in range(3):
        a.publish(s.topic("TopicA"), b"qos %d" % qos, qos)
    got = a.wait_messages(3)
    assert sorted(m.qos for m in got) == [0, 1, 2], [m.qos for m in got]
    twice = s.wire()
    assert twice.connect(s.client_id("b"))["code"] == 0
    twice.send(packet(CONNECT, 0, utf8("MQTT") + bytes([5 if s.v5 else 4, 2]) + b"\x00\x3c"
                      + (b"\x00" if s.v5 else b"") + utf8(s.client_id("b"))))
    assert twice.closed(), "a second CONNECT must close the connection"
    wrong = s.wire()
    wrong.send(packet(CONNECT, 0, utf8("hj") + bytes([4, 2]) + b"\x00\x3c" + utf8(s.client_id("c"))))
    assert wrong.closed(), "an unknown protocol name must close the connection"
    assert not any(p["type"] == CONNACK and p["code"] == 0 for p in wrong.seen), wrong.seen


@scenario("3.1.1", "5.0")
def retained_message(s):
    """Retained messages reach a later subscriber with the retain flag (and,
    in MQTT 5, their user properties); an empty retained message clears
    them ([MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-10])."""
    props = publish_props(UserProperty=[("a", "2"), ("c", "3")]) if s.v5 else None
    a = s.peer("a")
    for qos, level in ((0, "B"), (1, "C"), (2, "D")):
        a.publish(s.topic("TopicA", level), b"qos %d" % qos, qos, retain=True, props=props)
    b = s.peer("b")
    b.subscribe(s.topic("TopicA", "+"))
    got = b.wait_messages(3)
    assert all(m.retain for m in got), [m.retain for m in got]
    assert sorted(m.qos for m in got) == [0, 1, 2]
    if s.v5:
        for m in got:
            assert sorted(m.properties.UserProperty) == [("a", "2"), ("c", "3")], m.properties
    for qos, level in ((0, "B"), (1, "C"), (2, "D")):
        a.publish(s.topic("TopicA", level), b"", qos, retain=True)
    c = s.peer("c")
    c.subscribe(s.topic("TopicA", "+"))
    s.marker(a, c, s.topic("TopicA", "marker"))
    assert c.received() == [], [(m.topic, m.payload) for m in c.received()]


@scenario("3.1.1", "5.0")
def offline_message_queueing(s):
    """QoS 1 and 2 messages for a persistent session that is offline are
    delivered when it comes back ([MQTT-3.1.2-5]); QoS 0 may be."""
    props = connect_props(SessionExpiryInterval=300) if s.v5 else None
    a = s.peer("a", clean=False, props=props)
    a.reconnect(clean=True)  # start from an empty session
    a.subscribe(s.topic("+", "+"))
    a.disconnect()
    b = s.peer("b")
    for qos, level in ((0, "B"), (1, "C"), (2, "D")):
        b.publish(s.topic("TopicA", level), b"qos %d" % qos, qos)
    assert a.reconnect(clean=False)["session_present"]
    a.wait("the QoS 1 and 2 messages", lambda: {1, 2} <= {m.qos for m in a.messages})
    s.marker(b, a, s.topic("TopicA", "marker"))
    qos = sorted(m.qos for m in a.received())
    assert qos in ([1, 2], [0, 1, 2]), qos


@scenario("3.1.1", "5.0")
def will_message(s):
    """A connection lost without DISCONNECT has its will published
    ([MQTT-3.1.2-8])."""
    b = s.peer("b")
    b.subscribe(s.topic("Topic", "C"))
    a = s.wire()
    assert a.connect(s.client_id("a"), keepalive=2,
                     will=(s.topic("Topic", "C"), b"client not disconnected", {}))["code"] == 0
    a.close()
    got = b.wait_messages(1)
    assert got[0].payload == b"client not disconnected"


@scenario("3.1.1", "5.0")
def zero_length_clientid(s):
    """An empty client id: 3.1.1 accepts it only with a clean session and
    answers CONNACK 0x02 otherwise ([MQTT-3.1.3-7], [MQTT-3.1.3-8]); MQTT 5
    accepts it with a clean start (assigning an id) ([MQTT-3.1.3-6])."""
    if not s.v5:
        persistent = s.wire()
        answer = persistent.connect("", clean=False)
        assert answer["code"] == 0x02, answer
        assert persistent.closed()
    clean = s.wire()
    answer = clean.connect("", clean=True)
    assert answer["code"] == 0, answer
    clean.disconnect()


@scenario("3.1.1", "5.0")
def overlapping_subscriptions(s):
    """A message matching two of a client's subscriptions arrives once at
    the highest QoS, or once per subscription at each QoS (§3.3.5)."""
    a = s.peer("a")
    a.subscribe(s.topic("TopicA", "#"), 2)
    a.subscribe(s.topic("TopicA", "+"), 1)
    a.publish(s.topic("TopicA", "C"), b"overlapping topic filters", 2)
    a.wait_messages(1)
    s.marker(a, a, s.topic("TopicA", "marker"))
    qos = sorted(m.qos for m in a.received())
    assert qos in ([2], [1, 2]), qos


@scenario("3.1.1", "5.0")
def keepalive(s):
    """A client silent for 1.5 × its keep-alive is disconnected and its will
    published ([MQTT-3.1.2-24])."""
    b = s.peer("b", keepalive=0)
    b.subscribe(s.topic("TopicA"))
    a = s.wire()
    started = time.monotonic()
    assert a.connect(s.client_id("a"), keepalive=2,
                     will=(s.topic("TopicA"), b"keepalive expiry", {}))["code"] == 0
    b.wait_messages(1)
    assert time.monotonic() - started >= 2.0, "closed before the keep-alive ran out"
    assert a.closed(), "the silent connection is still open"


@scenario("3.1.1", "5.0")
def redelivery_on_reconnect(s):
    """Unacknowledged QoS 1 and 2 deliveries of a persistent session are
    sent again, with DUP, when it reconnects ([MQTT-4.4.0-1])."""
    props = {"session_expiry": 300} if s.v5 else None
    b = s.wire()
    b.connect(s.client_id("b"), clean=True)
    b.disconnect()
    b = s.wire()
    b.connect(s.client_id("b"), clean=False, props=props)
    assert b.subscribe(1, [(s.topic("TopicA", "#"), 2)])["codes"] == [2]
    a = s.peer("a")
    a.publish(s.topic("TopicA", "B"), b"", 1)
    a.publish(s.topic("TopicA", "C"), b"", 2)
    first = [b.expect(PUBLISH), b.expect(PUBLISH)]
    assert sorted(p["qos"] for p in first) == [1, 2], first
    b.close()  # no PUBACK, no PUBREC
    again = s.wire()
    assert again.connect(s.client_id("b"), clean=False, props=props)["session_present"]
    resent = [again.expect(PUBLISH), again.expect(PUBLISH)]
    assert sorted(p["qos"] for p in resent) == [1, 2], resent
    assert all(p["dup"] for p in resent), resent
    for p in resent:
        again.ack(PUBACK if p["qos"] == 1 else PUBREC, p["id"])
    assert again.expect(PUBREL)
    again.disconnect()


@scenario("3.1.1", "5.0")
def subscribe_failure(s):
    """A subscription the server does not allow is answered with a failure
    code, 0x80 or above ([MQTT-3.9.3-2]; MQTT 5 §3.9.3)."""
    a = s.peer("a")
    codes = a.subscribe(s.nosubscribe)
    assert codes and codes[0] >= 0x80, codes


@scenario("3.1.1", "5.0")
def dollar_topics(s):
    """A filter that begins with a wildcard does not match a topic name
    that begins with `$` ([MQTT-4.7.2-1])."""
    b = s.peer("b")
    levels = s.topic("C").split("/")[1:]
    codes = b.subscribe("/".join(["+"] + levels))
    assert codes[0] < 0x80, codes
    b.publish("$" + s.topic("C"), b"", 1)  # a server may refuse it; it must not route it here
    s.marker(b, b, s.topic("C"))
    assert b.received() == [], [m.topic for m in b.received()]


@scenario("5.0")
def unsubscribe(s):
    """After UNSUBSCRIBE a filter no longer matches; the others still do
    ([MQTT-3.10.4-1])."""
    b = s.peer("b")
    for level in ("A", "B", "C"):
        b.subscribe(s.topic(level))
    result, mid = b.client.unsubscribe(s.topic("A"))
    a = s.peer("a")
    a.publish(s.topic("A"), b"unsubscribed", 1)
    a.publish(s.topic("B"), b"topic 1", 1)
    a.publish(s.topic("C"), b"topic 2", 1)
    b.wait_messages(1, s.topic("C"))
    b.wait_messages(1, s.topic("B"))
    s.marker(a, b, s.topic("C"))
    assert sorted(m.topic for m in b.received()) == [s.topic("B"), s.topic("C")]


@scenario("5.0")
def session_expiry(s):
    """A session lives for its Session Expiry Interval after the connection
    ends: 0 ends it at once, a DISCONNECT may change it (MQTT 5 §3.1.2.11,
    [MQTT-3.14.2-2])."""
    a = s.peer("a", props=connect_props(SessionExpiryInterval=0))
    assert not a.connack["session_present"]
    a.subscribe(s.topic("A"))
    a.disconnect()
    assert not a.reconnect(clean=False)["session_present"], "expiry 0 keeps no session"
    a.disconnect()
    a.props = connect_props(SessionExpiryInterval=300)
    a.reconnect(clean=True)
    a.subscribe(s.topic("A"))
    a.disconnect()
    assert a.reconnect(clean=False)["session_present"], "the session lives within its expiry"
    a.disconnect()
    a.props = connect_props(SessionExpiryInterval=1)
    a.reconnect(clean=True)
    a.subscribe(s.topic("A"))
    a.disconnect()
    time.sleep(3)  # the interval itself is what is tested: let it pass
    assert not a.reconnect(clean=False)["session_present"], "the session outlived its expiry"
    a.disconnect()
    a.reconnect(clean=True)
    a.subscribe(s.topic("A"))
    discon = Properties(PacketTypes.DISCONNECT)
    discon.SessionExpiryInterval = 300
    a.disconnect(props=discon)
    assert a.reconnect(clean=False)["session_present"], "the DISCONNECT's expiry applies"
    discon.SessionExpiryInterval = 0
    a.disconnect(props=discon)
    assert not a.reconnect(clean=False)["session_present"], "a DISCONNECT expiry of 0 ends it"


@scenario("5.0")
def user_properties(s):
    """User properties reach the subscriber unaltered, in order
    ([MQTT-3.3.2-17], [MQTT-3.3.2-18])."""
    a = s.peer("a")
    a.subscribe(s.topic("A"))
    props = publish_props(UserProperty=[("a", "2"), ("c", "3")])
    for qos in range(3):
        a.publish(s.topic("A"), b"", qos, props=props)
    for m in a.wait_messages(3):
        assert m.properties.UserProperty == [("a", "2"), ("c", "3")], m.properties


@scenario("5.0")
def payload_format(s):
    """The payload format indicator and content type are forwarded
    unaltered ([MQTT-3.3.2-4], MQTT 5 §3.3.2.3.9)."""
    a = s.peer("a")
    a.subscribe(s.topic("A"))
    props = publish_props(PayloadFormatIndicator=1, ContentType="My name")
    for qos in range(3):
        a.publish(s.topic("A"), b"", qos, props=props)
    for m in a.wait_messages(3):
        assert m.properties.ContentType == "My name", m.properties
        assert m.properties.PayloadFormatIndicator == 1, m.properties


@scenario("5.0")
def publication_expiry(s):
    """A message whose expiry passed while its subscriber was offline is not
    delivered; one delivered later carries the time it has left
    ([MQTT-3.3.2-5], [MQTT-3.3.2-6])."""
    b = s.peer("b", props=connect_props(SessionExpiryInterval=300))
    b.subscribe(s.topic("A"))
    b.disconnect()
    a = s.peer("a")
    a.publish(s.topic("A"), b"qos 1 - expire", 1, props=publish_props(MessageExpiryInterval=1))
    a.publish(s.topic("A"), b"qos 2 - expire", 2, props=publish_props(MessageExpiryInterval=1))
    a.publish(s.topic("A"), b"qos 1 - keep", 1, props=publish_props(MessageExpiryInterval=60))
    a.publish(s.topic("A"), b"qos 2 - keep", 2, props=publish_props(MessageExpiryInterval=60))
    a.publish(s.topic("A"), b"qos 1 - never expires", 1)
    time.sleep(3)  # the expiry itself is what is tested: let it pass
    b.reconnect(clean=False)
    b.wait_messages(3)
    s.marker(a, b, s.topic("A"))
    got = {m.payload: m for m in b.received()}
    assert sorted(got) == [b"qos 1 - keep", b"qos 1 - never expires", b"qos 2 - keep"], sorted(got)
    for payload in (b"qos 1 - keep", b"qos 2 - keep"):
        assert got[payload].properties.MessageExpiryInterval < 60, got[payload].properties
    # A message published without an expiry is delivered without one.
    never = got[b"qos 1 - never expires"].properties
    assert not hasattr(never, "MessageExpiryInterval"), never


@scenario("5.0")
def subscribe_options(s):
    """No Local, Retain As Published and Retain Handling 0, 1 and 2
    ([MQTT-3.8.3-3], [MQTT-3.3.1-12], [MQTT-3.3.1-13], [MQTT-3.8.4-4])."""
    a, b = s.peer("a"), s.peer("b")
    a.subscribe(s.topic("A"), noLocal=True)
    b.subscribe(s.topic("A"), noLocal=True)
    a.subscribe(s.topic("marker"))
    a.publish(s.topic("A"), b"noLocal test", 1)
    b.wait_messages(1)
    s.marker(b, a, s.topic("marker"))
    assert a.received() == [], "No Local: a client's own message came back"

    c = s.peer("c")
    c.subscribe(s.topic("R"), retainAsPublished=True)
    c.publish(s.topic("R"), b"retain as published false", 1)
    c.publish(s.topic("R"), b"retain as published true", 1, retain=True)
    got = c.wait_messages(2)
    assert [m.retain for m in got] == [False, True], [(m.payload, m.retain) for m in got]

    d = s.peer("d")
    for qos, level in ((0, "B"), (1, "C"), (2, "D")):
        d.publish(s.topic("W", level), b"qos %d" % qos, qos, retain=True)
    d.subscribe(s.topic("marker"))
    d.subscribe(s.topic("W", "+"), retainHandling=1)
    assert len(d.wait_messages(3)) == 3
    d.clear()
    d.subscribe(s.topic("W", "+"), retainHandling=1)  # exists already: nothing again
    s.marker(d, d, s.topic("marker"))
    assert d.received() == [], "Retain Handling 1 sent retained messages again"
    e = s.peer("e")
    e.subscribe(s.topic("marker"))
    e.subscribe(s.topic("W", "+"), retainHandling=2)
    s.marker(e, e, s.topic("marker"))
    assert e.received() == [], "Retain Handling 2 sent retained messages"
    f = s.peer("f")
    f.subscribe(s.topic("W", "+"), retainHandling=0)
    assert len(f.wait_messages(3)) == 3
    f.clear()
    f.subscribe(s.topic("W", "+"), retainHandling=0)
    assert len(f.wait_messages(3)) == 3, "Retain Handling 0 sends them on every subscribe"


@scenario("5.0")
def assigned_clientid(s):
    """An empty client id gets an Assigned Client Identifier in the CONNACK
    ([MQTT-3.2.2-16])."""
    wire = s.wire()
    answer = wire.connect("", clean=True)
    assert answer["code"] == 0, answer
    assert answer["props"].get("assigned_client_id"), answer
    wire.disconnect()


@scenario("5.0")
def subscribe_identifiers(s):
    """A delivery carries the identifiers of the subscriptions it matched
    ([MQTT-3.3.4-3], [MQTT-3.3.4-4])."""
    def with_id(n):
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = n
        return props
    a, b = s.peer("a"), s.peer("b")
    a.subscribe(s.topic("A"), props=with_id(456789))
    b.subscribe(s.topic("A"), props=with_id(2))
    b.subscribe(s.topic("A", "#"), props=with_id(3))
    b.publish(s.topic("A"), b"sub identifier test", 1)
    got = a.wait_messages(1)
    assert got[0].properties.SubscriptionIdentifier == [456789], got[0].properties
    b.wait_messages(1)
    s.marker(a, b, s.topic("A"))
    ids = sorted(i for m in b.received() for i in m.properties.SubscriptionIdentifier)
    assert ids == [2, 3], ids


@scenario("5.0")
def request_response(s):
    """Response Topic and Correlation Data reach the responder unaltered,
    and its answer reaches the requester ([MQTT-3.3.2-15], [MQTT-3.3.2-16])."""
    a, b = s.peer("a"), s.peer("b")
    a.subscribe(s.topic("reply"))
    b.subscribe(s.topic("request"))
    a.publish(s.topic("request"), b"request", 1,
              props=publish_props(ResponseTopic=s.topic("reply"), CorrelationData=b"334"))
    request = b.wait_messages(1)[0]
    assert request.properties.ResponseTopic == s.topic("reply"), request.properties
    assert request.properties.CorrelationData == b"334", request.properties
    b.publish(request.properties.ResponseTopic, b"response", 1,
              props=publish_props(CorrelationData=request.properties.CorrelationData))
    answer = a.wait_messages(1)[0]
    assert answer.properties.CorrelationData == b"334", answer.properties


@scenario("5.0")
def client_topic_alias(s):
    """Topic alias 0 is a protocol error ([MQTT-3.3.2-8]); an alias set by a
    client stands for its topic until the connection ends ([MQTT-3.3.2-10])."""
    zero = s.wire()
    zero.connect(s.client_id("z"))
    zero.publish(s.topic("A"), b"topic alias 0", 1, props={"topic_alias": 0})
    assert zero.closed(), "alias 0 must close the connection"
    assert any(p["type"] == DISCONNECT and p["code"] == 0x94 for p in zero.seen), zero.seen
    wire = s.wire()
    answer = wire.connect(s.client_id("a"), props={"session_expiry": 300})
    allowed = answer["props"].get("topic_alias_maximum", 0)
    assert wire.subscribe(1, [(s.topic("A"), 1)])["codes"] == [1]
    if allowed == 0:
        return  # aliases from the client refused up front, as the server may choose
    wire.publish(s.topic("A"), b"topic alias 1", 1, packet_id=2, props={"topic_alias": 1})
    wire.publish("", b"topic alias 2", 1, packet_id=3, props={"topic_alias": 1})
    got = [p for p in (wire.read(), wire.read(), wire.read(), wire.read()) if p["type"] == PUBLISH]
    assert [p["payload"] for p in got] == [b"topic alias 1", b"topic alias 2"], got
    for p in got:
        wire.ack(PUBACK, p["id"])
    assert all(p["topic"] == s.topic("A") or p["props"].get("topic_alias") for p in got), got
    wire.disconnect()
    again = s.wire()
    assert again.connect(s.client_id("a"), clean=False)["session_present"]
    again.publish("", b"topic alias 4", 1, packet_id=4, props={"topic_alias": 1})
    assert again.closed(), "an alias from an earlier connection must not stand"
    assert not any(p.get("payload") == b"topic alias 4" for p in again.seen), again.seen


@scenario("5.0")
def server_topic_alias(s):
    """A server sends no topic alias to a client that allows none, and none
    above the client's maximum ([MQTT-3.3.2-9], [MQTT-3.3.2-11])."""
    for maximum in (None, 0, 1):
        wire = s.wire()
        wire.connect(s.client_id("a%s" % maximum),
                     props={} if maximum is None else {"topic_alias_maximum": maximum})
        wire.subscribe(1, [(s.topic("A"), 2)])
        for qos in range(3):
            wire.publish(s.topic("A"), b"topic alias", qos, packet_id=qos + 1)
        got = []
        while len(got) < 3:
            p = wire.read()
            if p["type"] == PUBLISH:
                got.append(p)
                if p["qos"] == 1:
                    wire.ack(PUBACK, p["id"])
                elif p["qos"] == 2:
                    wire.ack(PUBREC, p["id"])
            elif p["type"] == PUBREC:
                wire.ack(PUBREL, p["id"])
        aliases = [p["props"]["topic_alias"] for p in got if "topic_alias" in p["props"]]
        assert all(1 <= a <= (maximum or 0) for a in aliases), (maximum, aliases)
        known = {}
        for p in got:  # every delivery resolves to the subscribed topic
            alias = p["props"].get("topic_alias")
            if p["topic"]:
                known[alias] = p["topic"]
            assert (p["topic"] or known.get(alias)) == s.topic("A"), got
        wire.disconnect()


@scenario("5.0")
def maximum_packet_size(s):
    """A server never sends a packet larger than the client's Maximum Packet
    Size, dropping the message instead ([MQTT-3.1.2-24] of MQTT 5, §3.1.2.11.4);
    a packet above the server's own maximum is answered with DISCONNECT 0x95
    ([MQTT-3.2.2-15] and §4.13)."""
    big = s.wire()
    server_max = big.connect(s.client_id("big"))["props"].get("maximum_packet_size")
    if server_max is not None and server_max < 16 * 1024 * 1024:
        big.publish(s.topic("A"), b"." * server_max, 0)
        assert big.closed(), "a packet above the server's maximum must close the connection"
        assert any(p["type"] == DISCONNECT and p["code"] == 0x95 for p in big.seen), big.seen
    small = s.wire()
    small.connect(s.client_id("small"), props={"maximum_packet_size": 64})
    small.subscribe(1, [(s.topic("A"), 1)])
    small.publish(s.topic("A"), b"." * 64, 1, packet_id=2)  # too big to come back
    small.publish(s.topic("A"), b"." * 8, 1, packet_id=3)
    got = []
    while not any(p["type"] == PUBLISH for p in got):
        got.append(small.read())
    published = [p for p in got if p["type"] == PUBLISH]
    assert [p["payload"] for p in published] == [b"." * 8], published
    assert all(p["size"] + 2 <= 64 for p in got), got
    small.disconnect()


@scenario("5.0")
def server_keep_alive(s):
    """The keep-alive the server holds a client to is the one its CONNACK
    names in Server Keep Alive, or the client's own when it names none
    ([MQTT-3.2.2-21], [MQTT-3.1.2-22] of MQTT 5)."""
    wire = s.wire()
    started = time.monotonic()
    answer = wire.connect(s.client_id("a"), keepalive=3)
    held_to = answer["props"].get("server_keep_alive", 3)
    assert held_to > 0, answer
    assert wire.closed(DEADLINE + 1.5 * held_to), "a silent client was never disconnected"
    assert time.monotonic() - started >= held_to, "disconnected before its keep-alive ran out"


@scenario("5.0")
def flow_control1(s):
    """A server never has more unacknowledged QoS 1 and 2 deliveries to a
    client than the client's Receive Maximum ([MQTT-3.3.4-9])."""
    wire = s.wire()
    wire.connect(s.client_id("a"), props={"receive_maximum": 2})
    wire.subscribe(1, [(s.topic("A"), 1)])
    for n in range(3):
        wire.publish(s.topic("A"), b"message %d" % n, 1, packet_id=10 + n)
    deliveries, acks = [], 0
    while len(deliveries) < 2 or acks < 3:
        p = wire.read()
        if p["type"] == PUBLISH:
            deliveries.append(p)
        elif p["type"] == PUBACK:
            acks += 1
    assert len(deliveries) == 2, deliveries
    # The third is held back until one is acknowledged: ack one, ping, and
    # the third must come before the PINGRESP only after the ack.
    wire.send(packet(PINGREQ, 0, b""))
    while True:
        p = wire.read()
        assert p["type"] != PUBLISH, "a third delivery beyond the Receive Maximum"
        if p["type"] == PINGRESP:
            break
    wire.ack(PUBACK, deliveries[0]["id"])
    third = wire.expect(PUBLISH)
    assert third["payload"] == b"message 2", third
    for p in (deliveries[1], third):
        wire.ack(PUBACK, p["id"])
    wire.disconnect()


@scenario("5.0")
def flow_control2(s):
    """A client that sends more unacknowledged QoS 2 publishes than the
    server's Receive Maximum is disconnected with 0x93 ([MQTT-3.3.4-7],
    [MQTT-3.3.4-8])."""
    wire = s.wire()
    answer = wire.connect(s.client_id("a"))
    maximum = answer["props"].get("receive_maximum", 65535)
    burst = b"".join(
        packet(PUBLISH, 0x04, utf8(s.topic("A")) + struct.pack("!H", n) + b"\x00" + b"m")
        for n in range(1, maximum + 2))
    wire.send(burst)  # no PUBREL: every one stays unacknowledged
    assert wire.closed(), "the connection outlived a receive maximum exceeded"
    assert any(p["type"] == DISCONNECT and p["code"] == 0x93 for p in wire.seen), wire.seen[-3:]


@scenario("5.0")
def will_delay(s):
    """A will is published when its Will Delay Interval has passed or the
    session ends, whichever is first (MQTT 5 §3.1.3.2.2, [MQTT-3.1.3-9])."""
    b = s.peer("b")
    b.subscribe(s.topic("will", "#"))
    for name, delay, expiry in (("delay", 2, 300), ("expiry0", 300, 0), ("expiry", 300, 2)):
        a = s.wire()
        topic = s.topic("will", name)
        a.connect(s.client_id(name), props={"session_expiry": expiry},
                  will=(topic, b"will " + name.encode(), {"will_delay": delay}))
        started = time.monotonic()
        a.close()
        got = b.wait_messages(1, topic)
        waited = time.monotonic() - started
        assert got[0].payload == b"will " + name.encode()
        assert waited >= min(delay, expiry) - 0.5, (name, waited)


@scenario("5.0")
def shared_subscriptions(s):
    """Each message to a shared subscription goes to one of its members;
    ordinary subscriptions of the same clients still get their copy
    (MQTT 5 §4.8.2)."""
    a, b = s.peer("a"), s.peer("b")
    for peer in (a, b):
        assert peer.subscribe("$share/sharename/" + s.topic("x"))[0] < 0x80
        assert peer.subscribe(s.topic("A"))[0] < 0x80
    b.publish(s.topic("A"), b"to both", 0)
    a.wait_messages(1)
    b.wait_messages(1)
    a.clear()
    b.clear()
    for n in range(10):
        b.publish(s.topic("x"), b"shared %d" % n, 1)
    a.wait("ten shared messages", lambda: len(a.messages) + len(b.messages) >= 10)
    s.marker(b, a, s.topic("A"))
    b.wait_messages(1, s.topic("A"))
    shared = [m.payload for m in a.received(s.topic("x")) + b.received(s.topic("x"))]
    assert sorted(shared) == sorted(b"shared %d" % n for n in range(10)), shared


# --------------------------------------------------------------------------


def run(args, suite, name, fn):
    s = Scenario(args, suite, name)
    started = time.monotonic()
    try:
        fn(s)
        outcome = {"passed": True}
    except Exception as cause:
        detail = "%s: %s" % (type(cause).__name__, cause)
        frames = [f for f in traceback.extract_tb(cause.__traceback__) if f.name == fn.__name__]
        outcome = {"passed": False, "detail": detail[:400],
                   "line": frames[-1].lineno if frames else None}
    finally:
        s.close()
    outcome.update({"suite": suite, "name": name, "seconds": round(time.monotonic() - started, 1)})
    return outcome


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", default="interop", help="the first topic level of every scenario")
    parser.add_argument("--nosubscribe", required=True, help="a filter the server refuses")
    parser.add_argument("--only", help="run only the scenarios with this name")
    args = parser.parse_args()
    chosen = [(suite, name, fn) for suite, name, fn in SCENARIOS if args.only in (None, name)]
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        outcomes = list(pool.map(lambda one: run(args, *one), chosen))
    for outcome in outcomes:
        print(json.dumps(outcome), flush=True)
    passed = sum(o["passed"] for o in outcomes)
    print(json.dumps({"total": len(outcomes), "passed": passed}), flush=True)


if __name__ == "__main__":
    main()
