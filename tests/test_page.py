"""The page `paragrad serve` shows at /, driven in a real headless Chromium against a real
server: what it shows must be what the model predicts.

Skipped when playwright or /usr/bin/chromium is missing, unless PARAGRAD_REQUIRE_BROWSER
is set (as in CI), where a missing browser fails. PARAGRAD_UPDATE_SCREENSHOT=1 also writes
the screenshot to docs/serve-page.png.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving import running

import paragrad as pg

CHROMIUM = Path("/usr/bin/chromium")
# No GPU, no sandbox (containers), and nothing that reaches out to the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve-page.png"
TOKEN = "page-test-token"


def _sync_playwright() -> Any:
    """playwright's ``sync_playwright``, or a skip (a failure under PARAGRAD_REQUIRE_BROWSER)."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is missing (apt-get install chromium, or `make browser` as root)")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("PARAGRAD_REQUIRE_BROWSER"):
            pytest.fail(f"PARAGRAD_REQUIRE_BROWSER is set, but {reason}", pytrace=False)
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classifier of text labels over named features, and a regression over unnamed ones."""
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 2))
    bought = np.where(X[:, 0] + 0.5 * X[:, 1] + rng.normal(0, 0.8, 400) > 0, "yes", "no")
    shoppers = pg.Dataset(X, bought, feature_names=["age", "income"], target_name="bought")
    buy = pg.train(pg.models.LogisticRegression(), shoppers, engine="serial", progress=False)
    prices = pg.make_regression(300, 3, noise=0.5, seed=1)
    price = pg.train(pg.models.LinearRegression(), prices, engine="serial", progress=False)
    files = {"buy": folder / "buy.npz", "price": folder / "price.npz"}
    buy.save(files["buy"])
    price.save(files["price"])
    return files


def _serve(files: dict[str, Path], *options: str) -> Iterator[str]:
    """A real server on a free port; yields its address (stopped by its process id after)."""
    specs = [f"{name}={path}" for name, path in files.items()]
    with running(*specs, "--no-access-log", "--reload-interval", "0", *options) as server:
        yield f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def server(model_files: dict[str, Path]) -> Iterator[str]:
    yield from _serve(model_files)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with _sync_playwright()() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """The page loaded, its model list shown; the test fails on any script error in it."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server + "/")
    page.locator("#models button").first.wait_for()
    yield page
    context.close()
    assert not errors, errors


def _post(url: str, payload: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _predict(page: Any, model: str, row: list[str] | None = None, csv: str = "") -> list[str]:
    """Select ``model``, enter ``row`` in its fields (or ``csv``), press Predict: the predictions."""
    page.click(f'#models button[data-model="{model}"]')
    if row is not None:
        for field, value in zip(page.locator("input[data-feature]").all(), row, strict=True):
            field.fill(value)
    page.fill("#csv", csv)
    page.evaluate("$('results').replaceChildren(); $('error').hidden = true")  # no stale answer
    page.click("#predict")
    page.locator("#results td.prediction, #error:not([hidden])").first.wait_for()
    return page.locator("#results td.prediction").all_inner_texts()


def _shown_probabilities(page: Any, row: int) -> dict[str, str]:
    cells = page.locator(f'#results tr[data-row="{row}"] td.proba')
    return {cell.get_attribute("data-class"): cell.inner_text() for cell in cells.all()}


def test_the_page_lists_each_model_with_its_version_features_and_classes(page, server):
    with urllib.request.urlopen(server + "/v2/models", timeout=10) as response:
        served = {m["name"]: m["parameters"] for m in json.loads(response.read())["models"]}
    assert set(served) == {"buy", "price"}
    for name, parameters in served.items():
        shown = page.locator(f'#models button[data-model="{name}"]').inner_text()
        assert name in shown and parameters["family"] in shown
        assert f"version {parameters['version']}" in shown
    assert "features: age, income" in page.locator('button[data-model="buy"]').inner_text()
    assert "classes: no, yes" in page.locator('button[data-model="buy"]').inner_text()
    assert "features: x0, x1, x2" in page.locator('button[data-model="price"]').inner_text()


def test_one_row_shows_the_models_prediction_and_probabilities(page, model_files):
    buy = pg.load_model(model_files["buy"])
    for row in ([0.4, -1.25], [-0.3, 0.2]):
        assert _predict(page, "buy", [str(v) for v in row]) == [str(buy.predict(np.array([row]))[0])]
        expected = dict(zip(buy.classes_.tolist(), buy.predict_proba(np.array([row]))[0], strict=True))
        assert 0.05 < expected["yes"] < 0.95  # a row the model is unsure of: every digit counts
        shown = _shown_probabilities(page, 0)
        assert set(shown) == set(expected)
        for label, text in shown.items():
            digits = len(text.partition(".")[2])
            assert abs(float(text) - expected[label]) <= 0.5 * 10**-digits + 1e-12, (label, text)

    price = pg.load_model(model_files["price"])
    row = [1.5, -0.25, 3e-3]
    (shown_price,) = _predict(page, "price", [str(v) for v in row])
    assert float(shown_price) == price.predict(np.array([row]))[0]
    assert page.locator("#results td.proba").count() == 0


def test_csv_rows_with_a_header_in_another_order_give_one_prediction_each(page, model_files):
    buy = pg.load_model(model_files["buy"])
    csv = "income;bought;age\n-1.25;?;0.4\n0.2;?;-0.3\n"
    X = np.array([[0.4, -1.25], [-0.3, 0.2]])
    assert _predict(page, "buy", csv=csv) == buy.predict(X).tolist()
    for i in range(2):
        shown = {label: float(text) for label, text in _shown_probabilities(page, i).items()}
        expected = dict(zip(buy.classes_.tolist(), buy.predict_proba(X)[i], strict=True))
        assert shown == pytest.approx(expected, abs=0.5e-4 + 1e-12)

    price = pg.load_model(model_files["price"])
    shown = _predict(page, "price", csv="1\t2\t3\n-0.5\t0\t7.25")
    assert [float(v) for v in shown] == price.predict(np.array([[1, 2, 3], [-0.5, 0, 7.25]])).tolist()


def test_the_servers_error_is_shown(page, server):
    assert _predict(page, "price", ["1", "abc", "2"]) == []
    status, answer = _post(
        server + "/v2/models/price/infer",
        {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1, "abc", 2]}]},
    )
    assert status == 400
    assert page.locator("#error").inner_text() == answer["error"]
    assert page.locator("#result").is_hidden()

    assert _predict(page, "price", csv="1,2\n") == []  # a short row is told before it is sent
    assert page.locator("#error").inner_text() == "CSV row 1 has 2 values; expected 3"
    assert _predict(page, "price", ["1", "2", "3"]) != []
    assert page.locator("#error").is_hidden()


def test_metrics_show_the_request_rate_and_latency(page, tmp_path):
    for value in ("0.5", "1.5", "-2"):
        _predict(page, "buy", [value, "0.75"])
    page.wait_for_function("/ms$/.test(document.getElementById('latency').textContent)")
    rate = page.locator("#rate").inner_text()
    assert re.fullmatch(r"\d+\.\d req/s", rate) and float(rate.split()[0]) > 0, rate
    latency = page.locator("#latency").inner_text()
    assert re.fullmatch(r"\d+\.\d\d ms", latency) and float(latency.split()[0]) > 0, latency
    page.screenshot(path=tmp_path / "serve-page.png")
    if os.environ.get("PARAGRAD_UPDATE_SCREENSHOT"):
        page.screenshot(path=SCREENSHOT)


def test_a_token_asked_for_after_a_401_is_kept_and_sent(browser, model_files):
    server = _serve({"buy": model_files["buy"]}, "--token", TOKEN)
    address = next(server)
    try:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(address + "/")
        page.locator("#models-error").wait_for()
        assert "Bearer" in page.locator("#models-error").inner_text()
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.locator('#models button[data-model="buy"]').wait_for()
        page.reload()  # the token is kept in localStorage
        assert _predict(page, "buy", ["0.4", "-1.25"]) != []
        context.close()
    finally:
        server.close()
