"""A person unsubscribes in a real headless browser (Debian's chromium, driven by
Playwright, JavaScript switched off) from a generated email's link, and watches the
status turn to confirmed while the whole pipeline runs: web (``optout run web`` as its
own process), intake, the connectors against the stand-ins, and the confirmer.

Screenshots of each step go to ``test-output/``. Install the browser with
``deploy/install-chromium.sh``; Playwright never downloads one of its own here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from services.common.contract import Scope
from services.common.settings import PartnerEndpoint, Settings
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.intake.service import run as run_intake
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.partners_api import PartnersStandin
from services.standins.web import StandinServer
from services.web.links import mint_link
from services.web.tokens import Purpose, keyring_from_settings, request_event_id, verify
from tests.support.logcapture import CAPTURE, json_log_errors
from tests.support.pipeline import free_port, isolated_settings, running, wait_until

# Services as separate processes (and a browser): one such test at a time on one worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("service-processes")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
ROOT = Path(__file__).resolve().parents[2]
PARTNER_TOKENS = {"adnetwork": "tok-a", "databroker": "tok-b"}
ESP_TOKEN = "e2e-esp-token"


@pytest.fixture
def web_process(base_settings: dict[str, Any]) -> Iterator[tuple[Settings, str]]:
    """``optout run web`` as a separate process on a free port; SIGTERM at the end."""
    with serve_web(base_settings) as served:
        yield served


@contextlib.contextmanager
def serve_web(
    base_settings: dict[str, Any], log_name: str = "web-e2e-service.log", **extra_env: str
) -> Iterator[tuple[Settings, str]]:
    """``optout run web`` as a separate process on a free port (``extra_env``: more
    OPTOUT_* variables for it); SIGTERM at the end."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    cfg = isolated_settings(
        base_settings,
        web_port=port,
        web_public_url=public,
        connector_retry_initial_seconds=0.05,
        connector_retry_max_backoff_seconds=0.5,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTOUT_")}
    env.update(
        {
            "OPTOUT_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
            "OPTOUT_DATABASE_URL": cfg.dsn(),
            "OPTOUT_TOPIC_PREFIX": cfg.topic_prefix,
            "OPTOUT_WEB_PORT": str(port),
            "OPTOUT_WEB_PUBLIC_URL": public,
            "OPTOUT_LOG_FORMAT": "json",
            **extra_env,
        }
    )
    log_path = OUTPUT / log_name
    OUTPUT.mkdir(exist_ok=True)
    CAPTURE.watch(lambda: json_log_errors("web", [log_path]))  # its errors fail the test too
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", "web"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def healthy() -> bool:
                assert proc.poll() is None, f"web exited early: {log_path.read_text()[-2000:]}"
                try:
                    return httpx.get(f"{public}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, timeout=60, message="the web service to listen")
            yield cfg, public
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    assert code == 0, f"web did not stop cleanly on SIGTERM: {log_path.read_text()[-2000:]}"


def _generated_email(url: str, headers: dict[str, str]) -> bytes:
    message = EmailMessage()
    message["From"] = "News <news@shop.example>"
    message["To"] = "jane.doe@example.com"
    message["Subject"] = "Spring offers"
    for name, value in headers.items():
        message[name] = value
    message.set_content("Our spring offers.\n\nUnsubscribe: " + url + "\n")
    message.add_alternative(
        f'<p>Our spring offers.</p><footer><a href="{url}">Unsubscribe</a></footer>', subtype="html"
    )
    return message.as_bytes(policy=SMTP)


def _state(cfg: Settings, event_id: str) -> str | None:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT state FROM requests WHERE event_id = %s", (event_id,)).fetchone()
    return None if row is None else str(row[0])


def test_a_person_unsubscribes_in_a_browser_and_sees_it_confirmed(web_process, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not installed at /usr/bin/chromium (run deploy/install-chromium.sh)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
    base_cfg, _public = web_process

    # 1. The sender mints the link and sends the email; we read it back like a mail client.
    link = mint_link(base_cfg, email="Jane.Doe@example.com", customer_id="cust-e2e-1")
    raw = _generated_email(link.url, link.headers())
    received = message_from_bytes(raw, policy=SMTP)
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header_url = str(received["List-Unsubscribe"]).strip("<>")
    html_part = received.get_body(preferencelist=("html",))
    assert html_part is not None
    footer = re.search(r'<footer><a href="([^"]+)">Unsubscribe</a>', html_part.get_content())
    assert footer is not None and footer.group(1) == header_url == link.url
    assert "jane" not in link.url.lower()

    esp = EmailProviderStandin(token=ESP_TOKEN, rejected={})
    partners = PartnersStandin(PARTNER_TOKENS)
    with (
        StandinServer(esp.handle, name="email_provider") as esp_server,
        StandinServer(partners.handle, name="partners") as partner_server,
    ):
        cfg = base_cfg.model_copy(
            update={
                "email_provider_url": esp_server.url,
                "email_provider_token": SecretStr(ESP_TOKEN),
                "partners": [
                    PartnerEndpoint(name=n, url=f"{partner_server.url}/partners/{n}", token=SecretStr(t))
                    for n, t in PARTNER_TOKENS.items()
                ],
                "mail_house_dir": str(tmp_path / "mail_house"),
            }
        )
        with (
            running(run_intake, cfg, "intake"),
            running(run_confirmer, cfg, "confirmer"),
            running(connector_runner("email_provider", cfg), cfg, "email_provider"),
            running(connector_runner("third_party_sharing", cfg), cfg, "third_party_sharing"),
            sync_api.sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(
                    java_script_enabled=False, viewport={"width": 390, "height": 844}
                )
                page = context.new_page()
                problems: list[str] = []
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on(
                    "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
                )

                # 2. The page: whose subscription, the choices, nothing changed by looking.
                response = page.goto(footer.group(1))
                assert response is not None and response.status == 200
                assert response.headers["referrer-policy"] == "no-referrer"
                assert page.get_by_text("j•••••e@e•••••e.com").is_visible()
                for label in ("Marketing email", "Postal mail", "Sharing with third parties"):
                    assert page.get_by_label(label).is_visible()
                page.screenshot(path=str(OUTPUT / "web-1-unsubscribe-page.png"), full_page=True)
                assert _state(cfg, _all_event_id(link.token, cfg)) is None

                # 3. Keyboard only: Tab reaches the main button first, Enter submits.
                page.keyboard.press("Tab")
                focused = page.locator(":focus")
                assert focused.inner_text().strip() == "Unsubscribe from all marketing"
                page.keyboard.press("Enter")
                page.get_by_role("heading", name="Request received").wait_for(timeout=30_000)
                assert page.get_by_role("status").first.is_visible()
                assert page.get_by_text("What happens next").is_visible()
                page.screenshot(path=str(OUTPUT / "web-2-request-received.png"), full_page=True)

                # 4. Status: pending (or already confirmed), then confirmed.
                page.get_by_role("button", name="Check the status").click()
                overall = page.locator("#overall")
                assert overall.get_attribute("data-state") in ("not yet received", "pending", "confirmed")
                deadline = time.monotonic() + 120
                while overall.get_attribute("data-state") != "confirmed":
                    assert time.monotonic() < deadline, "status did not turn confirmed in 120 s"
                    time.sleep(1.0)
                    page.get_by_role("button", name="Check again").click()
                    overall = page.locator("#overall")
                assert overall.inner_text() == "Confirmed"
                page.screenshot(path=str(OUTPUT / "web-3-status-confirmed.png"), full_page=True)
                assert problems == []
            finally:
                browser.close()

    event_id = _all_event_id(link.token, cfg)
    assert _state(cfg, event_id) == "CONFIRMED"
    assert "jane.doe@example.com" in esp.suppressed
    assert (OUTPUT / "web-3-status-confirmed.png").stat().st_size > 10_000


def _all_event_id(token: str, cfg: Settings) -> str:
    verified = verify(keyring_from_settings(cfg), token, datetime.now(UTC), Purpose.UNSUBSCRIBE)
    return request_event_id(verified, [Scope.ALL])
