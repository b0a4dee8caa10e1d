"""``GET /openapi.json``: the gateway's API as an OpenAPI 3.1 document, written by hand.

A test checks that every route the app serves is here (and nothing else), so the document
cannot silently fall behind the code.  The level, bar and directory objects are those of
``docs/schema.json`` (the service's records), referenced rather than copied.
"""

from __future__ import annotations

from typing import Any


def _record(name: str) -> dict[str, Any]:
    """A record of the service's output, defined in the checkout's docs/schema.json."""
    return {"type": "object", "description": f"docs/schema.json, $defs/{name}"}


_ERROR = {
    "description": "The problem, in one line.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
_LEVEL = {"$ref": "#/components/schemas/Level"}
_SERIES_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A series id from the directory: an index id, or <id>.TR / <id>.NTR.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,72}$"},
}


def _range_params(default: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "from",
            "in": "query",
            "description": f"UTC milliseconds, inclusive (default: {default} before `to`).",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "to",
            "in": "query",
            "description": "UTC milliseconds, inclusive (default: now).",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "limit",
            "in": "query",
            "description": "At most this many entries, oldest first (default 10000).",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
        },
    ]


_STREAM_PARAMS = [
    {
        "name": "series",
        "in": "query",
        "description": "Comma-separated series ids (default: every series).",
        "schema": {"type": "string"},
    },
    {
        "name": "max_rate",
        "in": "query",
        "description": "Most updates a second per series (newest value only; default and "
        "upper bound from [gateway] default_rate, max_rate).",
        "schema": {"type": "number", "exclusiveMinimum": 0},
    },
    {
        "name": "last_event_id",
        "in": "query",
        "description": "Resume: the id of the last event received (SSE clients send the "
        "Last-Event-ID header instead).",
        "schema": {"type": "string"},
    },
    {
        "name": "access_token",
        "in": "query",
        "description": "The bearer token, for clients that cannot set headers (EventSource).",
        "schema": {"type": "string"},
    },
]

_STREAM_DESCRIPTION = """\
Events: `status` (`{"state": "live"|"disconnected"}`: whether the gateway's Redis
subscription is up), `level` (a level message, as published on `P:levels:<id>`) and
`heartbeat` (`{"ts_ms", "state"}` every `[gateway] heartbeat_s` without other events).
First the status, then the snapshot (the newest level of each series), then updates,
conflated per series: a client gets at most `max_rate` updates a second per series, always
the newest value.  The `id` of an event lists the seq of every followed series
(`US500:123,US500.TR:77`, left out above 500 series); on reconnect (`Last-Event-ID`) only
the series whose seq differs are sent: levels are state, so their newest value fills the gap.
"""


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    series_item = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "directory": {
                "oneOf": [{"$ref": "#/components/schemas/SeriesEntry"}, {"type": "null"}]
            },
            "latest": {"oneOf": [_LEVEL, {"type": "null"}]},
        },
        "required": ["id", "directory", "latest"],
    }
    get = "get"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamer gateway",
            "version": "1",
            "description": "Index levels published by streamer, for browsers and HTTP clients.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Level": _record("level_message"),
                "Bar": _record("bar_entry"),
                "SeriesEntry": _record("directory_entry"),
                "SeriesItem": series_item,
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/": {get: {"summary": "The live page", "responses": {"200": {"description": "HTML"}}}},
            "/healthz": {
                get: {
                    "summary": "The process is up (and whether Redis is)",
                    "responses": {"200": _json_response("ok", {"type": "object"})},
                }
            },
            "/metrics": {
                get: {
                    "summary": "Prometheus metrics of the gateway",
                    "responses": {"200": {"description": "Prometheus text format"}},
                }
            },
            "/openapi.json": {
                get: {
                    "summary": "This document",
                    "responses": {"200": _json_response("OpenAPI 3.1", {"type": "object"})},
                }
            },
            "/api/v1/info": {
                get: {
                    "summary": "Settings a page needs: staleness threshold, heartbeat, rates",
                    "responses": {"200": _json_response("settings", {"type": "object"})},
                }
            },
            "/api/v1/series": {
                get: {
                    "summary": "The directory and the latest level of every series",
                    "responses": {
                        "200": _json_response(
                            "every series",
                            {
                                "type": "object",
                                "properties": {
                                    "state": {"enum": ["live", "disconnected"]},
                                    "series": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/SeriesItem"},
                                    },
                                },
                            },
                        ),
                        "401": _ERROR,
                    },
                }
            },
            "/api/v1/series/{id}": {
                get: {
                    "summary": "One series: its directory entry and latest level",
                    "parameters": [_SERIES_PARAM],
                    "responses": {
                        "200": _json_response("the series", series_item),
                        "401": _ERROR,
                        "404": _ERROR,
                    },
                }
            },
            "/api/v1/series/{id}/history": {
                get: {
                    "summary": "Raw levels (the history stream) published in a time range",
                    "parameters": [_SERIES_PARAM, *_range_params("one hour")],
                    "responses": {
                        "200": _json_response("entries, oldest first", {"type": "object"}),
                        "400": _ERROR,
                        "401": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/api/v1/series/{id}/bars": {
                get: {
                    "summary": "Minute bars whose minute starts in a time range",
                    "parameters": [_SERIES_PARAM, *_range_params("24 hours")],
                    "responses": {
                        "200": _json_response(
                            "bars, oldest first",
                            {
                                "type": "object",
                                "properties": {
                                    "bars": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Bar"},
                                    }
                                },
                            },
                        ),
                        "400": _ERROR,
                        "401": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/api/v1/stream": {
                get: {
                    "summary": "Server-Sent Events: snapshot, then conflated updates",
                    "description": _STREAM_DESCRIPTION,
                    "parameters": [
                        *_STREAM_PARAMS,
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "description": "Resume after this event (sent by EventSource).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {"description": "text/event-stream"},
                        "400": _ERROR,
                        "401": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/api/v1/ws": {
                get: {
                    "summary": "WebSocket: the stream's protocol, one JSON object a frame",
                    "description": 'Each frame is `{"event": KIND, "data": {...}}`, with '
                    '`"id"` as in the SSE stream on the last frame of a write.\n\n'
                    + _STREAM_DESCRIPTION,
                    "parameters": _STREAM_PARAMS,
                    "responses": {
                        "101": {"description": "Switching to WebSocket"},
                        "400": _ERROR,
                        "401": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
        },
    }
