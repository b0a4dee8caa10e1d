"""The page in a real browser: headless Chromium (Debian's package, /usr/bin/chromium) driven by
Playwright, against the service on the demo universe with a simulated feed.

It loads the page, sees a level change live, opens a chart, and sees the STALE banner once the
feed stops.  Screenshots go to ``test-artifacts/`` of the checkout (or
``$STREAMER_TEST_ARTIFACTS``); with ``STREAMER_UPDATE_SCREENSHOT=1`` the live one is also
copied to ``docs/gateway.png`` (the README's picture), so a test run never changes the
checkout by itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.localservices import LocalMosquitto, LocalRedis
from streamer.tools.processes import ChildProcess, child_environment, streamer_command
from tests.conftest import ServiceConfig, write_service_config
from tests.gateway.conftest import GatewayProcess, gateway_section
from tests.integration.harness import REPO, ServiceProcess

CHROMIUM = Path("/usr/bin/chromium")
STALE_AFTER_S = 3.0
NO_VALUE = "\N{EN DASH}"  # what the page shows for a level it does not have

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/bootstrap --test installs it)"
)


def artifacts_dir() -> Path:
    directory = Path(os.environ.get("STREAMER_TEST_ARTIFACTS", REPO / "test-artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def demo_config(
    tmp_path: Path, mosquitto: LocalMosquitto, redis_server: LocalRedis
) -> ServiceConfig:
    """The demo universe (23 series, seeded prices: levels at start-up)."""
    config = write_service_config(
        tmp_path,
        mosquitto.url,
        redis_server.url,
        indices={},
        gateway=gateway_section(stale_after_s=STALE_AFTER_S),
        quality={"max_move_pct": 1000.0},
    )
    shutil.copytree(REPO / "config" / "indices", tmp_path / "indices", dirs_exist_ok=True)
    return config


@pytest.fixture
def demo_gateway(demo_config: ServiceConfig) -> Iterator[GatewayProcess]:
    service = ServiceProcess(demo_config.path, demo_config.metrics_url)
    try:
        service.wait_connected(timeout=30)
        gateway = GatewayProcess(demo_config)
        try:
            gateway.wait_live()
            yield gateway
        finally:
            gateway.stop()
    finally:
        service.kill()


def simulated_feed(config: ServiceConfig, seconds: float) -> ChildProcess:
    return ChildProcess(
        "simulate",
        streamer_command(
            *("simulate", "--config", str(config.path), "--rate", "400"),
            *("--time-scale", "60", "--duration", str(seconds)),
        ),
        child_environment({}),
        config.path.parent / "simulate.log",
    ).start()


def test_the_page_shows_live_levels_a_chart_and_the_stale_state(
    demo_gateway: GatewayProcess, demo_config: ServiceConfig
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(demo_gateway.url + "/")
            rows = page.locator("#levels tbody tr")
            expect(rows).to_have_count(23, timeout=15_000)
            level = page.locator('tr[data-series="DEMO30"] td.level')
            expect(level).not_to_have_text(NO_VALUE)
            seeded = level.inner_text()

            feed = simulated_feed(demo_config, seconds=30)
            try:
                expect(level).not_to_have_text(seeded, timeout=15_000)  # it moved, live
                banner = page.locator("#banner")
                expect(banner).to_have_attribute("data-state", "live")
                page.locator('tr[data-series="US500"]').click()
                expect(page.locator("#detail")).to_be_visible()
                expect(page.locator("#chart polyline.live-line")).to_have_count(1, timeout=10_000)
                page.wait_for_function(
                    "document.querySelectorAll('#levels svg.spark polyline').length >= 20",
                    timeout=15_000,
                )
                page.wait_for_function(
                    "(document.querySelector('#chart polyline.live-line')"
                    ".getAttribute('points') || '').split(' ').length >= 8",
                    timeout=20_000,
                )
                live_shot = artifacts_dir() / "gateway-live.png"
                page.screenshot(path=str(live_shot), full_page=True)
            finally:
                feed.stop()

            # The feed has stopped: no level moves, and the page must say so.
            expect(banner).to_have_attribute("data-state", "stale", timeout=STALE_AFTER_S * 5000)
            expect(banner).to_contain_text("STALE")
            expect(page.locator("tr.stale")).to_have_count(23)
            page.screenshot(path=str(artifacts_dir() / "gateway-stale.png"), full_page=True)

            # And the gateway going away is DISCONNECTED, not a quiet market.
            demo_gateway.stop()
            expect(banner).to_have_attribute("data-state", "disconnected", timeout=10_000)
        finally:
            browser.close()
    if os.environ.get("STREAMER_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(live_shot, REPO / "docs" / "gateway.png")
