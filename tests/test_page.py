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
import time
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
    # Features named as numbers (pandas' default column names): no first line is a header.
    X4 = rng.standard_normal((200, 4))
    up = np.where(X4[:, 0] + rng.normal(0, 1, 200) > 0, "up", "down")
    digits = pg.Dataset(X4, up, feature_names=["0", "1", "2", "3"])
    # Twenty classes with long labels and long feature names: wide content must not stretch the page.
    labels = np.array([f"a rather long class label number {i}" for i in range(20)])
    wide = pg.Dataset(
        rng.standard_normal((400, 2)),
        labels[rng.integers(0, 20, 400)],
        feature_names=["an_unusually_long_feature_name_that_has_to_wrap_somewhere", "short"],
    )
    files = {"buy": folder / "buy.npz", "price": folder / "price.npz", "digits": folder / "digits.npz"}
    files["wide"] = folder / "wide.npz"
    buy.save(files["buy"])
    price.save(files["price"])
    pg.train(pg.models.LogisticRegression(), digits, engine="serial", progress=False).save(files["digits"])
    pg.train(pg.models.SoftmaxRegression(), wide, engine="serial", progress=False).save(files["wide"])
    return files


def _serve(files: dict[str, Path], *options: str) -> Iterator[str]:
    """A real server on a free port; yields its address (stopped by its process id after)."""
    specs = [f"{name}={path}" for name, path in files.items()]
    with running(*specs, "--no-access-log", "--reload-interval", "0", *options) as server:
        yield f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def server(model_files: dict[str, Path]) -> Iterator[str]:
    yield from _serve({name: model_files[name] for name in ("buy", "price")})


@pytest.fixture(scope="module")
def odd_server(model_files: dict[str, Path]) -> Iterator[str]:
    """The models with numeric feature names and with twenty long class labels."""
    yield from _serve({name: model_files[name] for name in ("digits", "wide", "price")})


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with _sync_playwright()() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    yield from _open(browser, server)


@pytest.fixture
def odd_page(browser: Any, odd_server: str) -> Iterator[Any]:
    yield from _open(browser, odd_server)


def _open(browser: Any, server: str) -> Iterator[Any]:
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


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


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
    # The page refuses "abc" itself, so the request is changed on its way to show the server's word.
    def send_abc(route: Any) -> None:
        body = json.loads(route.request.post_data)
        body["inputs"][0]["data"][1] = "abc"
        route.continue_(post_data=json.dumps(body))

    page.route("**/infer", send_abc)
    assert _predict(page, "price", ["1", "7", "2"]) == []
    page.unroute("**/infer")
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
        looks = []
        page.on("response", lambda r: looks.append(r.status) if r.url.endswith("/metrics") else None)
        page.goto(address + "/")
        page.locator("#models-error").wait_for()
        message = page.locator("#models-error").inner_text()
        assert message.startswith("this server needs its token: enter it above\n") and "Bearer" in message
        page.wait_for_timeout(2500)
        assert looks == [401]  # no more looks at /metrics until a token is entered
        page.fill("#token", "wrong")
        page.press("#token", "Enter")
        page.locator("#models-error >> text=the server refused this token").wait_for()
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.locator('#models button[data-model="buy"]').wait_for()
        page.wait_for_function("/req\\/s$/.test($('rate').textContent)")
        assert 200 in looks
        page.reload()  # the token is kept for this tab (sessionStorage), never on disk
        assert _predict(page, "buy", ["0.4", "-1.25"]) != []
        kept = page.evaluate(
            "[sessionStorage.getItem('paragrad.token'), localStorage.getItem('paragrad.token')]"
        )
        assert kept == [TOKEN, None]
        context.close()
    finally:
        server.close()


def test_numeric_feature_names_make_every_line_data(odd_page, model_files):
    page = odd_page
    digits = pg.load_model(model_files["digits"])
    X = np.array([[2, 3, 1, 0], [5, 6, 7, 8], [1, 1, 0, 0]])
    assert _predict(page, "digits", csv="2,3,1,0\n5,6,7,8\n1,1,0,0") == digits.predict(X).tolist()


def test_quoted_csv_cells_may_hold_the_separator_and_quotes(page, model_files):
    buy = pg.load_model(model_files["buy"])
    csv = '"income","age","note; with a semicolon"\r\n"-1.25",0.4,"a, b"\r\n'
    csv += '\r\n0.2 ,"-0.3","say ""hi"", twice"\r\n'  # a blank line, an escaped quote
    X = np.array([[0.4, -1.25], [-0.3, 0.2]])
    assert _predict(page, "buy", csv=csv) == buy.predict(X).tolist()


def test_the_page_names_the_cell_or_header_it_cannot_read(page):
    cases = {
        'age,income\n1,2\n3,"1,5"': 'row 2, column income: "1,5" is not a number',
        "income;age\n1;\n": "row 1, column age is empty",
        "0.5,1e400": 'row 1, column income: "1e400" is not a number',
        "age,incme\n1,2": 'the CSV header has no column "income" (it has: age, incme)',
        "age,Income\n1,2": (
            'the CSV header has no column "income"; it has "Income", but header names are case-sensitive'
        ),
    }
    for csv, message in cases.items():
        assert _predict(page, "buy", csv=csv) == []
        assert page.locator("#error").inner_text() == message, csv
    assert _predict(page, "buy", ["0.5", "abc"]) == []
    assert page.locator("#error").inner_text() == 'column income: "abc" is not a number'


def test_a_replaced_model_file_is_picked_up_keeping_the_values_typed(browser, model_files, tmp_path):
    path = tmp_path / "buy.npz"
    path.write_bytes(model_files["buy"].read_bytes())
    server = _serve({"buy": path}, "--reload-interval", "0.05")
    address = next(server)
    try:
        page = browser.new_page()
        page.set_default_timeout(10_000)
        page.goto(address + "/")
        old_version = page.locator('#models button[data-model="buy"] .version').inner_text()
        page.fill('input[data-feature="age"]', "0.75")
        rng = np.random.default_rng(3)
        X = rng.standard_normal((200, 2))
        saved = np.where(X[:, 1] + rng.normal(0, 1, 200) > 0, "yes", "no")
        savers = pg.Dataset(X, saved, feature_names=["age", "savings"])
        new = pg.train(pg.models.LogisticRegression(), savers, engine="serial", progress=False)
        new.save(tmp_path / "new.npz")
        (tmp_path / "new.npz").replace(path)  # atomically, as `train --out` does
        deadline = time.monotonic() + 10
        while _get(address + "/v2/models/buy")["versions"][0] in old_version and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has loaded the new file
        page.click("#predict")
        page.locator("#note:not([hidden])").wait_for()
        note = page.locator("#note").inner_text()
        assert re.fullmatch(r"model buy now serves version \w+", note), note
        new_version = page.locator('#models button[data-model="buy"] .version').inner_text()
        assert new_version != old_version and new_version == "version " + note.rsplit(" ", 1)[1]
        assert page.locator('input[data-feature="age"]').input_value() == "0.75"
        assert page.locator('input[data-feature="savings"]').input_value() == "0"
        assert page.locator("#results td.prediction").count() == 1
        page.close()
    finally:
        server.close()


def test_the_rate_sums_every_series_and_skips_an_interval_whose_counters_went_down(page):
    served = {"text": ""}

    def metrics(requests: int, seconds: float) -> str:
        return "".join(
            f'paragrad_requests_total{{model="buy",code="200",endpoint="{endpoint}"}} {requests / 2}\n'
            f'paragrad_request_seconds_sum{{model="buy",endpoint="{endpoint}"}} {seconds / 2}\n'
            f'paragrad_request_seconds_count{{model="buy",endpoint="{endpoint}"}} {requests / 2}\n'
            for endpoint in ("/v2/models/buy/infer", "/v2/models/buy/ready")
        )

    page.route("**/metrics", lambda route: route.fulfill(body=served["text"], content_type="text/plain"))
    shown = []
    for requests, seconds in ((10, 0.1), (30, 0.3), (4, 0.04), (14, 0.14)):
        served["text"] = metrics(requests, seconds)
        look = "refreshMetrics().then(() => [$('rate').textContent, $('latency').textContent])"
        shown.append(page.evaluate(look))
    assert float(shown[1][0].split()[0]) > 0 and shown[1][1] == "10.00 ms"
    assert shown[2] == shown[1]  # the server restarted: that interval is skipped
    assert float(shown[3][0].split()[0]) > 0 and shown[3][1] == "10.00 ms"


def test_wide_results_scroll_inside_their_card_and_long_tables_are_cut(odd_page):
    page = odd_page
    assert len(_predict(page, "wide", ["1", "2"])) == 1
    assert page.locator("#results td.proba").count() == 20
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    assert page.evaluate("$('result').scrollWidth > $('result').clientWidth")  # it scrolls sideways

    csv = "\n".join(f"{i},{-i},0.5" for i in range(250))
    assert len(_predict(page, "price", csv=csv)) == 200
    assert "showing 200 of 250 rows" in page.locator("#result-info").inner_text()

    page.set_viewport_size({"width": 600, "height": 800})
    _predict(page, "wide", ["1", "2"])
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    models, form = page.locator("#models").bounding_box(), page.locator("#row-form").bounding_box()
    assert models["y"] + models["height"] <= form["y"]  # the model list stacks above the form


def test_accessible_names_keyboard_and_address(page):
    version = page.locator('#models button[data-model="buy"] .version').inner_text()
    assert page.get_by_role("button", name=f"buy, logistic, {version}").count() == 1
    assert page.locator("#result").get_attribute("aria-live") == "polite"
    page.click('#models button[data-model="buy"]')
    assert page.locator("#form-title .model").inner_text() == "buy"
    assert page.locator("#form-title .model").evaluate("e => getComputedStyle(e).textTransform") == "none"

    page.fill("#csv", "0.4,-1.25")
    page.press("#csv", "Control+Enter")
    page.locator("#results td.prediction").wait_for()

    page.evaluate("location.hash = '#model=price'")
    page.locator('#models button[data-model="price"][aria-pressed="true"]').wait_for()
    assert page.locator("#form-title .model").inner_text() == "price"


def test_long_feature_lists_fold_and_the_result_is_scrolled_into_view(browser, tmp_path):
    rng = np.random.default_rng(5)
    names = [f"feature_{i}" for i in range(20)]
    data = pg.Dataset(rng.standard_normal((100, 20)), rng.standard_normal(100), feature_names=names)
    path = tmp_path / "many.npz"
    pg.train(pg.models.LinearRegression(), data, engine="serial", progress=False).save(path)
    server = _serve({"many": path})
    address = next(server)
    try:
        context = browser.new_context(viewport={"width": 900, "height": 500})
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(address + "/")
        listed = page.locator('#models button[data-model="many"] .features')
        assert listed.inner_text() == "features: " + ", ".join(names[:6]) + " and 14 more"
        assert listed.get_attribute("title") == ", ".join(names)
        assert _predict(page, "many", ["0.5"] * 20) != []  # 20 fields push the result below the fold
        inside = "e => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight; }"
        page.wait_for_function(f"({inside})(document.getElementById('result'))")
        context.close()
    finally:
        server.close()
