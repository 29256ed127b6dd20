"""The demo page in a real (headless) Chromium: type a query, move the slider, see results and chart follow.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``); skipped with that reason otherwise.
``MATRYOSHKA_SCREENSHOT=1`` also saves ``docs/demo.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from matryoshka.embeddings import encode
from matryoshka.retrieval import FunnelIndex
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.quality import lemma_recall
from test_serving_support import wordnet_sample

torch.set_num_threads(1)

CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
        if p and os.path.exists(p)
    ),
    None,
)
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install -y chromium")]

NAME = "all-MiniLM-L6-v2"
DIMS = [16, 32, 64, 128, 256, 384]
QUERY = "a large animal with a long trunk"
ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


#: The test uses 300 glosses; a screenshot run indexes more so that the picture shows realistic results.
DOCS = 2000 if os.environ.get("MATRYOSHKA_SCREENSHOT") == "1" else 300
SCREENSHOT_QUERY = "a small knife whose blade folds into the handle"


@pytest.fixture(scope="module")
def demo_server(model):
    ids, texts = wordnet_sample(DOCS)
    vectors = encode(model, texts, batch_size=32)
    index = FunnelIndex.from_vectors(vectors, ids, texts, model_name=NAME)
    # the curve `matryoshka demo` measures at first start (each lemma finding its own gloss)
    quality = lemma_recall(model, index, NAME, sample=DOCS)
    assert list(next(iter(quality["models"][NAME].values()))) == [str(d) for d in DIMS]
    from matryoshka.serving.demo_models import demo_choices

    extra_models, extra_indexes = demo_choices(model, NAME, index)
    models = {NAME: model, **extra_models}
    app = create_app(
        ServeConfig(models=list(models), log_requests=False), models=models, index=index, quality=quality,
        demo_indexes=extra_indexes,
    )
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(demo_server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    tab = context.new_page()
    tab.requests = []  # type: ignore[attr-defined]
    tab.errors = []  # type: ignore[attr-defined]
    tab.on("request", lambda r: tab.requests.append(r.url))  # type: ignore[attr-defined]
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))  # type: ignore[attr-defined]
    tab.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))  # type: ignore[attr-defined]
    tab.goto(demo_server.url + "/")
    tab.wait_for_selector("body[data-state=idle]", timeout=30_000)
    yield tab
    context.close()


def texts_of(page, selector: str) -> list[str]:
    return page.locator(selector).all_inner_texts()


def wait_ready(page, dim: int, codec: str = "float32", query: str = QUERY) -> None:
    """Wait until the page shows the answer for exactly this query, dimension and codec."""
    page.wait_for_function(
        "([dim, codec, query]) => { const d = document.body.dataset;"
        " return d.state === 'ready' && d.dim === dim && d.codec === codec && d.query === query; }",
        arg=[str(dim), codec, query],
        timeout=30_000,
    )


def test_type_a_query_then_move_the_slider(page, demo_server):
    assert page.locator("#dim-ticks span").all_inner_texts() == [str(d) for d in DIMS]
    assert page.locator("#chart svg path.series").count() == 1
    assert page.locator("#chart").get_attribute("data-dim") == "64"

    page.locator("#query").fill(QUERY)
    wait_ready(page, 64)
    chosen_64 = texts_of(page, "#chosen li .title")
    full = texts_of(page, "#full li .title")
    assert len(chosen_64) == len(full) == 10
    overlap_64 = page.locator("#overlap").inner_text()
    assert overlap_64.endswith("/10")
    assert page.locator("#bytes").inner_text() == "256 vs 1536"
    marker_64 = page.locator("#chart line.marker").get_attribute("x1")

    slider = page.locator("#dim")
    slider.focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # 64 -> 32 -> 16
    wait_ready(page, 16)
    chosen_16 = texts_of(page, "#chosen li .title")
    assert page.locator("#chart").get_attribute("data-dim") == "16"
    assert page.locator("#chart line.marker").get_attribute("x1") != marker_64  # the chart follows the slider
    assert page.locator("#bytes").inner_text() == "64 vs 1536"
    assert "At 16 dimensions" in page.locator("#chosen-title").text_content()
    assert texts_of(page, "#full li .title") == full  # full size does not depend on the slider
    assert chosen_16 != chosen_64 or page.locator("#overlap").inner_text() != overlap_64

    page.keyboard.press("End")  # full size on both sides: identical lists
    wait_ready(page, 384)
    assert page.locator("#overlap").inner_text() == "10/10"
    assert texts_of(page, "#chosen li .title") == full
    assert page.locator("#chosen li.same").count() == 10

    page.select_option("#codec", "binary")
    wait_ready(page, 384, "binary")
    assert page.locator("#bytes").inner_text() == "48 vs 1536"

    assert not page.errors, page.errors
    assert all(url.startswith(demo_server.url) for url in page.requests), page.requests  # nothing from a CDN


def test_the_model_selector_searches_the_rotated_vectors(page):
    rotated = NAME + "+rotation"
    assert page.locator("#model option").all_inner_texts() == [NAME, rotated]
    page.select_option("#codec", "float32")
    page.locator("#query").fill(QUERY)
    page.locator("#dim").focus()
    page.keyboard.press("Home")  # 16 dims
    wait_ready(page, 16)
    base_full = texts_of(page, "#full li .title")
    page.select_option("#model", rotated)
    page.wait_for_function(f"document.body.dataset.model === '{rotated}' && document.body.dataset.state === 'ready'",
                           timeout=30_000)
    assert texts_of(page, "#full li .title") == base_full  # a rotation keeps full-size cosines
    page.select_option("#model", NAME)
    page.wait_for_function(f"document.body.dataset.model === '{NAME}' && document.body.dataset.state === 'ready'",
                           timeout=30_000)
    assert not page.errors, page.errors


def test_example_buttons_and_screenshot(page):
    page.select_option("#codec", "float32")
    page.locator("#dim").focus()
    page.keyboard.press("Home")
    for _ in range(DIMS.index(64)):
        page.keyboard.press("ArrowRight")
    page.locator("#examples button", has_text=QUERY).click()
    wait_ready(page, 64)
    assert page.locator("#query").input_value() == QUERY
    assert page.locator("#chosen li").count() == 10
    if os.environ.get("MATRYOSHKA_SCREENSHOT") == "1":
        page.locator("#query").fill(SCREENSHOT_QUERY)
        wait_ready(page, 64, query=SCREENSHOT_QUERY)
        page.mouse.move(0, 0)
        page.screenshot(path=str(ROOT / "docs" / "demo.png"), full_page=True)


def test_an_error_clears_the_last_results(page):
    page.locator("#query").fill(QUERY)
    page.locator("#dim").focus()
    page.keyboard.press("Home")
    wait_ready(page, 16)
    assert page.locator("#chosen li").count() == 10
    page.locator("#query").fill("a" * 2100)  # longer than the demo allows: the server answers 400
    page.wait_for_selector("body[data-state=error]", timeout=30_000)
    assert page.locator("#error").is_visible() and "2000" in page.locator("#error").inner_text()
    assert page.locator("#chosen li").count() == 0 and page.locator("#full li").count() == 0
    assert [page.locator(f"#{i}").inner_text() for i in ("overlap", "bytes", "latency")] == ["–", "–", "–"]
    page.locator("#query").fill(QUERY)  # and it recovers
    wait_ready(page, 16)
    assert page.locator("#error").is_hidden() and page.locator("#chosen li").count() == 10


def test_layout_holds_at_390_px(demo_server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    try:
        tab = context.new_page()
        tab.goto(demo_server.url + "/")
        tab.wait_for_selector("body[data-state=idle]", timeout=30_000)
        tab.locator("#query").fill(QUERY)
        tab.wait_for_selector("body[data-state=ready]", timeout=30_000)
        tab.select_option("#codec", "int8")  # the longest stat values: "19.5 KiB vs 117 KiB" and so on
        tab.wait_for_function("document.body.dataset.codec === 'int8' && document.body.dataset.state === 'ready'")
        overflow = tab.evaluate(
            """() => {
              const out = [];
              if (document.documentElement.scrollWidth > window.innerWidth) out.push('page ' + document.documentElement.scrollWidth);
              for (const el of document.querySelectorAll('.stat, .stat .v, .column, .controls, .chart-box, #chart svg')) {
                const r = el.getBoundingClientRect();
                if (r.right > window.innerWidth + 0.5 || r.left < -0.5) out.push(el.className + ' ' + r.left + '-' + r.right);
                if (el.scrollWidth > el.clientWidth + 1 && el.tagName !== 'svg') out.push(el.className + ' scrolls ' + el.scrollWidth);
              }
              return out;
            }"""
        )
        assert overflow == [], overflow
        shot = tmp_path / "demo-390.png"
        tab.screenshot(path=str(shot), full_page=True)
        header = shot.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(header[16:20], "big") == 390
        if os.environ.get("MATRYOSHKA_SCREENSHOT") == "1":
            shutil.copy(shot, ROOT / "docs" / "demo-390.png")
    finally:
        context.close()


# -- the same page served from a PostgreSQL index ------------------------------------------------------


@pytest.fixture(scope="module")
def pg_demo_server(model, postgres_url):
    """The demo over the same glosses stored in PostgreSQL (the demo's compare call on a database engine)."""
    from matryoshka.backends import open_index

    ids, texts = wordnet_sample(DOCS)
    vectors = encode(model, texts, batch_size=32)
    index = open_index(f"{postgres_url}?table=demo_browser", dim=vectors.shape[1], model_name=NAME, create=True)
    index.clear()
    index.upsert(ids, vectors, texts)
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model}, index=index)
    try:
        with ServerThread(app) as running:
            yield running
    finally:
        index.close()


@pytest.mark.postgres
def test_the_demo_on_a_postgresql_index(pg_demo_server, demo_server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("console", lambda m: m.type == "error" and errors.append(m.text))
    try:
        tab.goto(pg_demo_server.url + "/")
        tab.wait_for_selector("body[data-state=idle]", timeout=30_000)
        tab.locator("#query").fill(QUERY)
        wait_ready(tab, 64)
        chosen_64 = texts_of(tab, "#chosen li .title")
        full = texts_of(tab, "#full li .title")
        assert len(chosen_64) == len(full) == 10
        tab.locator("#dim").focus()
        tab.keyboard.press("End")
        wait_ready(tab, 384)
        assert tab.locator("#overlap").inner_text() == "10/10"
        tab.select_option("#codec", "binary")
        wait_ready(tab, 384, "binary")
        assert len(texts_of(tab, "#chosen li .title")) == 10
        assert not errors, errors
    finally:
        context.close()
    # the same full-size answer as the embedded index over the same vectors
    import httpx

    body = {"query": QUERY, "dim": 64, "codec": "float32", "k": 10}
    pg = httpx.post(pg_demo_server.url + "/demo/api/compare", json=body, timeout=60).json()
    embedded = httpx.post(demo_server.url + "/demo/api/compare", json=body, timeout=60).json()
    for side in ("chosen", "full"):
        assert [h["id"] for h in pg[side]["hits"]] == [h["id"] for h in embedded[side]["hits"]], side
