"""The demo page in a real (headless) Chromium: type a query, move the slider, see results and chart follow.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``); skipped with that reason otherwise.
``MATRYOSHKA_SCREENSHOT=1`` also saves ``docs/demo.png``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from matryoshka.embeddings.vectors import encode
from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.serving import ServeConfig, ServerThread, create_app
from matryoshka.serving.demo.index import WORDNET_CORPUS
from matryoshka.serving.quality import lemma_recall, merge_quality
from support import wordnet_sample

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
ROOT = Path(__file__).resolve().parents[2]
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
    from matryoshka.serving.demo.models import demo_choices

    extra_models, extra_indexes = demo_choices(model, NAME, index)
    models = {NAME: model, **extra_models}
    # the curves `matryoshka demo` measures at first start (each lemma finding its own gloss), one per choice
    quality = merge_quality([lemma_recall(models[name], extra_indexes.get(name, index), name, sample=DOCS)
                             for name in models])
    assert list(next(iter(quality["models"][NAME].values()))) == [str(d) for d in DIMS]
    app = create_app(
        ServeConfig(models=list(models), log_requests=False), models=models, index=index, quality=quality,
        demo_indexes=extra_indexes, demo_corpus=WORDNET_CORPUS,
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


def test_the_chart_follows_the_model_selector(page):
    rotated = NAME + "+rotation"
    page.select_option("#model", NAME)
    page.wait_for_function(f"document.getElementById('chart').dataset.model === '{NAME}'", timeout=30_000)
    base_curve = page.locator("#chart svg path.series").get_attribute("d")
    base_legend = page.locator("#chart .legend li").all_inner_texts()
    assert len(base_legend) == 1 and base_legend[0].startswith(NAME + " · ")  # the legend names the model
    assert page.locator("#chart-model").inner_text() == f"· {NAME}"

    page.select_option("#model", rotated)
    page.wait_for_function(f"document.getElementById('chart').dataset.model === '{rotated}'", timeout=30_000)
    assert page.locator("#chart svg path.series").count() == 1
    legend = page.locator("#chart .legend li").all_inner_texts()
    assert len(legend) == 1 and legend[0].startswith(rotated + " · ")
    assert page.locator("#chart svg path.series").get_attribute("d") != base_curve  # its own curve
    assert page.locator("#chart-model").inner_text() == f"· {rotated}"
    assert rotated in page.locator("#chart-note").inner_text()
    assert "No quality curve" not in page.locator("#chart-note").inner_text()

    page.select_option("#model", NAME)
    page.wait_for_function(f"document.getElementById('chart').dataset.model === '{NAME}'", timeout=30_000)
    assert page.locator("#chart svg path.series").get_attribute("d") == base_curve
    assert not page.errors, page.errors


def test_binary_scores_say_what_they_are(page):
    """At 16 dims in binary, hits tie at a few differing bits: the page shows bits, not a cosine of 1.000."""
    page.select_option("#model", NAME)
    page.locator("#query").fill(QUERY)
    page.locator("#dim").focus()
    page.keyboard.press("Home")
    page.select_option("#codec", "binary")
    wait_ready(page, 16, "binary")
    scores = texts_of(page, "#chosen li .score")
    assert len(scores) == 10 and all(re.fullmatch(r"\d+/16 bits", s) for s in scores), scores
    assert all(re.fullmatch(r"0\.\d{3}", s) for s in texts_of(page, "#full li .score"))  # full size: cosines
    note = page.locator("#chosen-note").inner_text()
    assert "Hamming" in note and "not a cosine" in note
    bits = [int(s.split("/")[0]) for s in scores]
    if bits.count(min(bits)) > 1:
        assert f"tie at {min(bits)} bits" in note
    page.select_option("#codec", "float32")
    wait_ready(page, 16)
    assert all(re.fullmatch(r"-?\d\.\d{3}", s) for s in texts_of(page, "#chosen li .score"))
    assert "cosine similarity at 16 dimensions" in page.locator("#chosen-note").inner_text()


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
        # The chart is drawn at the phone's width: its axis text keeps a readable size and does not collide.
        labels = tab.evaluate(
            """() => [...document.querySelectorAll('#chart svg text.x-tick, #chart svg text.y-tick')].map((t) => {
                 const r = t.getBoundingClientRect();
                 return {cls: t.getAttribute('class'), text: t.textContent, left: r.left, right: r.right, height: r.height};
               })"""
        )
        assert len([a for a in labels if "x-tick" in a["cls"]]) >= 4 and labels
        assert all(a["height"] >= 11 for a in labels), labels  # 12 px text (was 4 px: a 1,100 px chart scaled down)
        ticks = sorted((a for a in labels if "x-tick" in a["cls"]), key=lambda a: a["left"])
        assert all(a["right"] <= b["left"] for a, b in zip(ticks, ticks[1:])), ticks
        assert ticks[-1]["text"] == "384"
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
    from matryoshka.indexes import open_index

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
        # pgvector has no int8 vectors: the page does not offer what would end in an error
        assert tab.locator("#codec option").all_inner_texts() == ["float32", "float16", "binary"]
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


# -- a user's own index: SciFact abstracts ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def abstracts_server(model):
    """``serve --index`` on an index of 40 SciFact abstracts (ids without lemmas, texts of a page each)."""
    from matryoshka.data.beir import read_beir_corpus, resolve_beir_dir

    directory = resolve_beir_dir("scifact")
    if directory is None:
        pytest.skip("no local SciFact (MATRYOSHKA_DATA)")
    corpus = read_beir_corpus(next(directory.glob("corpus.jsonl*")))
    ids = sorted(corpus, key=lambda d: -len(corpus[d]))[:40]  # the longest abstracts
    texts = [corpus[d] for d in ids]
    index = FunnelIndex.from_vectors(encode(model, texts, batch_size=8), ids, texts, model_name=NAME)
    app = create_app(ServeConfig(models=[NAME], log_requests=False), models={NAME: model}, index=index)
    with ServerThread(app) as running:
        yield running


def test_a_users_own_index(abstracts_server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    try:
        tab.goto(abstracts_server.url + "/")
        tab.wait_for_selector("body[data-state=idle]", timeout=30_000)
        assert tab.locator("#query-title").inner_text() == "Search the index"  # not WordNet's title
        assert tab.locator("#examples").is_hidden() and tab.locator("#examples button").count() == 0
        assert "trunk" not in (tab.locator("#query").get_attribute("placeholder") or "")
        assert tab.locator("#chart-note").inner_text().startswith("No evaluation results")
        query = "vitamin D deficiency and bone density"
        tab.locator("#query").fill(query)
        wait_ready(tab, 64, query=query)
        texts = tab.locator("#chosen li .gloss")
        assert texts.count() == 10
        line = float(tab.evaluate("parseFloat(getComputedStyle(document.querySelector('#chosen .gloss')).lineHeight)"))
        heights = [texts.nth(i).bounding_box()["height"] for i in range(10)]
        assert max(heights) <= 3 * line + 1, heights  # three lines each, however long the abstract
        more = tab.locator("#chosen li .more").first
        assert more.inner_text() == "more"
        more.click()
        opened = tab.locator("#chosen li").filter(has=tab.locator(".more", has_text="less")).locator(".gloss")
        assert opened.bounding_box()["height"] > 4 * line  # the whole abstract
        page_height = tab.evaluate("document.documentElement.scrollHeight")
        assert page_height < 3000, page_height  # was 3,647 px with every abstract in full
        assert not errors, errors
    finally:
        context.close()
