"""docs/schema.json against what ``streamer run`` really publishes: every channel message, hash,
stream entry and directory entry of a run with ticks, a split, an official close and a
shutdown (which writes the minute bars)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import jsonschema
import redis

from tests.conftest import ServiceConfig, ServiceConfigFactory
from tests.integration.harness import REPO, Feed, ServiceProcess, wait_for

SCHEMA = json.loads((REPO / "docs" / "schema.json").read_text(encoding="utf-8"))


def check(definition: str, record: Any) -> None:
    schema = {**SCHEMA, "$ref": f"#/$defs/{definition}"}
    jsonschema.validate(record, schema, cls=jsonschema.Draft202012Validator)


def text(mapping: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in mapping.items()}


def entries(store: redis.Redis, key: str) -> list[dict[str, str]]:
    return [text(fields) for _, fields in cast("list[tuple[bytes, Any]]", store.xrange(key))]


def test_the_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(SCHEMA["$defs"]) >= {
        "level_message", "levels_batch", "level_hash", "history_entry", "bar_entry",
        "directory_entry", "action_entry", "close_entry",
    }  # fmt: skip


def test_every_published_record_matches_docs_schema(
    service_config: ServiceConfigFactory, mosquitto: Any, tmp_path: Path
) -> None:
    config: ServiceConfig = service_config(quality={"max_move_pct": 1000.0})
    store = redis.Redis.from_url(config.redis_url)
    pubsub = store.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe("test:levels*")
    service = ServiceProcess(config.path, config.metrics_url)
    feed = Feed(mosquitto.port)
    try:
        service.wait_connected()
        feed.ticks([{"symbol": s, "price": p} for s, p in
                    {"AAA": 10.0, "BBB": 20.0, "CCC": 30.0, "DDD": 40.0}.items()])  # fmt: skip
        feed.tick("AAA", 11.0)
        feed.control({"action": "split", "symbol": "BBB", "ratio": 2.0, "id": "split-1"})
        feed.control({"action": "close", "id": "close-1"})
        wait_for(lambda: store.xlen("test:closes:PX3") >= 1, what="an official close")
        wait_for(lambda: store.xlen("test:actions") >= 2, what="the split's audit records")
        assert service.terminate() == 0
    finally:
        feed.close()
        service.kill()

    messages: dict[str, int] = {"batch": 0, "series": 0}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is None:
            if messages["batch"] and messages["series"]:
                break
            continue
        if message["type"] != "pmessage":
            continue
        decoded = json.loads(message["data"])
        if message["channel"] == b"test:levels":
            check("levels_batch", decoded)
            messages["batch"] += 1
        else:
            check("level_message", decoded)
            assert message["channel"] == f"test:levels:{decoded['index']}".encode()
            messages["series"] += 1
    assert messages["batch"] and messages["series"]

    directory = cast("dict[bytes, bytes]", store.hgetall("test:series"))
    assert {k.decode() for k in directory} == {"PX3", "CAP2"}
    for value in directory.values():
        check("directory_entry", json.loads(value))
    for series in ("PX3", "CAP2"):
        check("level_hash", text(store.hgetall(f"test:index:{series}")))
        history = entries(store, f"test:history:{series}")
        bars = entries(store, f"test:bars:1m:{series}")
        assert history and bars
        for fields in history:
            check("history_entry", fields)
        for fields in bars:
            check("bar_entry", fields)
    closes = entries(store, "test:closes:PX3")
    actions = entries(store, "test:actions")
    assert closes and actions
    for fields in closes:
        check("close_entry", fields)
    for fields in actions:
        check("action_entry", fields)
    pubsub.close()
