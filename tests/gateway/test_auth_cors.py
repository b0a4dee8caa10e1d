"""Bearer tokens and CORS, against a running gateway."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamer.errors import ConfigError
from tests.gateway.conftest import GatewayProcess, gateway_section

TOKEN = "s3cret-token-for-desks"
DESK = "http://desk.example:8000"


@pytest.fixture
def gateway_settings(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "gateway-tokens").write_text(f"# desks\n{TOKEN}\nanother-token\n")
    return gateway_section(tokens_file="gateway-tokens", cors_origins=[DESK])


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_bearer_tokens_guard_the_api_not_the_page_or_probes(gateway: GatewayProcess) -> None:
    api = f"{gateway.url}/api/v1/series"
    status, headers = request(api)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert request(api, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(api, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    assert request(api, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert request(api, headers={"Authorization": "bearer another-token"})[0] == 200
    assert request(f"{api}?access_token={TOKEN}")[0] == 200  # EventSource cannot set headers
    assert request(f"{gateway.url}/api/v1/stream?access_token=nope")[0] == 401
    assert request(f"{gateway.url}/api/v1/series/PX3/history")[0] == 401
    for public in ("/", "/healthz", "/metrics", "/openapi.json", "/static/app.js"):
        assert request(gateway.url + public)[0] == 200, public


async def test_an_authorized_stream_flows(gateway: GatewayProcess) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{gateway.url}/api/v1/stream?series=PX3",
            headers={"Authorization": f"Bearer {TOKEN}", "Origin": DESK},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == DESK
        assert (await response.content.readline()).startswith(b"retry:")


def test_cors_only_for_the_configured_origins(gateway: GatewayProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    api = f"{gateway.url}/api/v1/series"
    status, headers = request(api, headers={**auth, "Origin": DESK})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == DESK
    assert "Origin" in headers["Vary"]
    status, headers = request(api, headers={**auth, "Origin": "http://evil.example"})
    assert status == 200  # served, but the browser will not hand it to the page
    assert "Access-Control-Allow-Origin" not in headers

    preflight = {"Origin": DESK, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    status, headers = request(api, "OPTIONS", preflight)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == DESK
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, _ = request(api, "OPTIONS", {**preflight, "Origin": "http://evil.example"})
    assert status == 403


def test_an_unreadable_or_empty_tokens_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    from streamer.gateway.server import read_tokens

    (tmp_path / "empty").write_text("# nobody yet\n\n")
    for name in ("missing", "empty"):
        with pytest.raises(ConfigError, match=r"field `gateway\.tokens_file`"):
            read_tokens(str(tmp_path / name))
    assert read_tokens("") == ()
