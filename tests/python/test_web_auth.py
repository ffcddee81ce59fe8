"""The web pages with `--auth required`, in headless Chromium. Run by
tests/auth.rs with STEPSTORE_URL, STEPSTORE_TOKEN (a read token),
STEPSTORE_EXPERIMENT (an experiment the server holds), STEPSTORE_SHOTS and,
when the server serves the MLflow UI, STEPSTORE_MLFLOW_UI=1.

- The dashboard's files load without a token; its first API call gets a
  401, the page asks for the token, keeps it and sends it as a bearer
  token from then on.
- The MLflow UI's page answers the browser's Basic challenge; once the
  browser has credentials (any user name, the token as password), every
  request of the page carries them and succeeds.
"""

import base64
import os

import pytest
import requests
from selenium.webdriver.common.by import By

from browser import Browser, available

BASE = os.environ.get("STEPSTORE_URL", "").rstrip("/")
TOKEN = os.environ.get("STEPSTORE_TOKEN", "")
EXPERIMENT = os.environ.get("STEPSTORE_EXPERIMENT", "")
SHOTS = os.environ.get("STEPSTORE_SHOTS", "web-auth-shots")
MLFLOW_UI = os.environ.get("STEPSTORE_MLFLOW_UI") == "1"


@pytest.fixture()
def browser():
    missing = available()
    if missing or not BASE:
        pytest.skip(missing or "STEPSTORE_URL is not set")
    browser = Browser(BASE, SHOTS)
    yield browser
    browser.close()


def test_the_dashboard_asks_for_the_token_once_and_sends_it(browser):
    browser.open("/ui/")
    dialog = browser.wait_for_css("#token-dialog[open]")[0]
    assert "needs an API token" in dialog.text
    browser.screenshot("dashboard-token-dialog")
    mark = browser.mark()
    browser.find("#token-input")[0].send_keys(TOKEN)
    dialog.find_element(By.CSS_SELECTOR, "button[value='save']").click()
    browser.wait_for_text(EXPERIMENT)
    browser.screenshot("dashboard-signed-in")
    after = [request for request in browser.server_requests("/api/", since=mark) if request.status]
    assert after, "no API request after the token was given"
    assert all(request.status == 200 for request in after), after
    assert all(
        request.headers.get("Authorization") == f"Bearer {TOKEN}" for request in after
    ), "the token is not sent as a bearer token"
    # What failed before the token: only the API's 401s, never the page.
    before = [failure for failure in browser.failures()]
    assert before and all(failure.startswith("401 ") and "/api/" in failure for failure in before), before
    # Reloaded, the page uses the kept token at once.
    mark = browser.mark()
    browser.open("/ui/")
    browser.wait_for_text(EXPERIMENT)
    assert not browser.find("#token-dialog[open]")
    assert all(r.status == 200 for r in browser.server_requests("/api/", since=mark) if r.status)


def test_the_mlflow_ui_answers_the_browser_challenge(browser):
    if not MLFLOW_UI:
        pytest.skip("the server does not serve the MLflow UI (no STEPSTORE_MLFLOW_UI_ROOTS)")
    page = requests.get(BASE + "/", timeout=30)
    assert page.status_code == 401
    assert page.headers["WWW-Authenticate"].startswith("Basic realm=")
    # What the browser sends once the user answered its prompt.
    credentials = base64.b64encode(f"me:{TOKEN}".encode()).decode()
    browser.driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}}
    )
    browser.open("/#/experiments")
    browser.wait_for_text(EXPERIMENT)
    browser.screenshot("mlflow-ui-signed-in")
    requests_made = browser.server_requests("")
    assert any("experiments/search" in request.url for request in requests_made)
    browser.assert_clean()
