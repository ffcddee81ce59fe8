"""Headless Chromium for the browser tests: Debian's `chromium` and
`chromium-driver`, driven by Selenium, with what every test asserts on
recorded for it: each request the page made and its status (Chrome's
performance log), response bodies on demand (the data a chart received),
uncaught JavaScript errors and console errors, and screenshots saved to a
directory the test names.
"""

import json
import os
import shutil
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("STEPSTORE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STEPSTORE_CHROMEDRIVER", "/usr/bin/chromedriver")

# The probe's flags: headless as root, and no background connections (this
# machine's network is closed, and the tests must make no request outside
# the server under test).
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--window-size=1600,1000",
    "--force-device-scale-factor=1",
    "--lang=en-US",
]


def available():
    """Why the browser tests cannot run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


class Request:
    """One request the page made."""

    def __init__(self, request_id, method, url, post_data, headers=None):
        self.id = request_id
        self.method = method
        self.url = url
        self.post_data = post_data
        # The headers the page set (Authorization, Last-Event-ID, ...).
        self.headers = headers or {}
        self.status = None
        self.failed = None

    def __repr__(self):
        return f"{self.status or self.failed} {self.method} {self.url}"


class Browser:
    """A Chromium window under test, recording requests and errors."""

    def __init__(self, base_url, shots_dir):
        self.base_url = base_url.rstrip("/")
        self.shots_dir = shots_dir
        os.makedirs(shots_dir, exist_ok=True)
        options = webdriver.ChromeOptions()
        for flag in FLAGS:
            options.add_argument(flag)
        options.binary_location = CHROMIUM
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(120)
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.requests = {}
        self.console = []

    def close(self):
        self.driver.quit()

    def open(self, path):
        """Loads `path` (relative to the server) and waits for the document."""
        self.driver.get(self.base_url + path)
        WebDriverWait(self.driver, 60).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )

    def collect(self):
        """Reads the logs the browser gathered since the last call."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message["method"], message.get("params", {})
            if method == "Network.requestWillBeSent":
                request = params["request"]
                self.requests[params["requestId"]] = Request(
                    params["requestId"],
                    request["method"],
                    request["url"],
                    request.get("postData"),
                    request.get("headers"),
                )
            elif method == "Network.responseReceived" and params["requestId"] in self.requests:
                self.requests[params["requestId"]].status = params["response"]["status"]
            elif method == "Network.loadingFailed" and params["requestId"] in self.requests:
                request = self.requests[params["requestId"]]
                # A request the page itself abandoned (a newer fetch
                # replaced it) is not a failure of the server.
                if not params.get("canceled"):
                    request.failed = params.get("errorText", "failed")
        self.console.extend(self.driver.get_log("browser"))

    def mark(self):
        """A point in the request log: pass it as `since` to look only at
        later requests."""
        self.collect()
        return len(self.requests)

    def server_requests(self, contains="", since=0):
        """Requests to the server whose URL contains `contains` (made after
        the mark `since`)."""
        self.collect()
        return [
            request
            for request in list(self.requests.values())[since:]
            if request.url.startswith(self.base_url) and contains in request.url
        ]

    def failures(self):
        """Requests that got a 4xx/5xx or failed, and requests that left
        the server (the page must make none)."""
        self.collect()
        bad = []
        for request in self.requests.values():
            if request.url.startswith(("data:", "blob:")):
                continue
            if not request.url.startswith(self.base_url):
                bad.append(f"request outside the server: {request.method} {request.url}")
            elif request.failed or (request.status is not None and request.status >= 400):
                bad.append(f"{request.status or request.failed} {request.method} {request.url}")
        return bad

    def js_errors(self):
        """Uncaught exceptions and console errors the page logged. Failed
        loads are reported by `failures()`; the browser's own
        `ResizeObserver loop` notice (layout settling over two frames, not
        an error of the page) is left out."""
        self.collect()
        return [
            entry["message"]
            for entry in self.console
            if entry["level"] == "SEVERE"
            and "Failed to load resource" not in entry["message"]
            and "ResizeObserver loop" not in entry["message"]
        ]

    def response_json(self, request):
        """The JSON body the page received for `request`."""
        body = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": request.id})
        return json.loads(body["body"])

    def response_text(self, request):
        """The body the page received for `request`, as text (CSV, ...)."""
        body = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": request.id})
        return body["body"]

    def wait_for_request(self, contains, timeout=60, count=1, since=0):
        """Waits until `count` requests whose URL contains `contains` have
        completed (after the mark `since`); returns them."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = [r for r in self.server_requests(contains, since) if r.status or r.failed]
            if len(done) >= count:
                return done
            time.sleep(0.2)
        raise AssertionError(
            f"no completed request containing {contains!r} within {timeout} s; seen: "
            f"{list(self.requests.values())}"
        )

    def wait_for_text(self, text, timeout=60):
        """Waits until the page shows `text`."""
        WebDriverWait(self.driver, timeout).until(
            lambda d: text in d.find_element(By.TAG_NAME, "body").text,
            message=f"the page never showed {text!r}",
        )

    def find(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for_css(self, css, timeout=60, count=1):
        WebDriverWait(self.driver, timeout).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count,
            message=f"the page never had {count} x {css!r}",
        )
        return self.find(css)

    def screenshot(self, name):
        path = os.path.join(self.shots_dir, f"{name}.png")
        self.driver.save_screenshot(path)
        return path

    def assert_clean(self, allowed_errors=()):
        """No failed request, no request outside the server, no JavaScript
        error (but those matching `allowed_errors`)."""
        failures = self.failures()
        assert not failures, f"failed requests: {failures}"
        errors = [
            error
            for error in self.js_errors()
            if not any(allowed in error for allowed in allowed_errors)
        ]
        assert not errors, f"JavaScript errors: {errors}"
