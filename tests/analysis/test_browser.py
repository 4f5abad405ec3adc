"""The feature browser: data built from a real pass, token effects, HTML escaping, and the
page itself in a real headless browser (Debian's chromium via selenium)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from sae_fast import SparseAutoencoder
from sae_fast.analysis.browser import SITE_FILE, build_feature_site
from sae_fast.analysis.features import token_effects
from sae_fast.analysis.labels import Labels
from sae_fast.cli import main
from sae_fast.data.activations import load_model

EVIL = "</script><script>window.__pwned = 1</script><b>&amp;"
ARTIFACTS = Path(os.environ.get("SAE_FAST_ARTIFACTS", "test-artifacts"))


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def site(minilm_sae, tmp_path_factory):
    sae_dir, _ = minilm_sae
    labels = Labels.load(sae_dir, 768)
    sae = SparseAutoencoder.load(sae_dir)
    model, tok = load_model("embedded")
    from sae_fast.analysis.features import collect_features
    from sae_fast.data.activations import token_windows
    from sae_fast.data.corpus import load_texts

    windows = token_windows(tok, load_texts("embedded", "text"), 64)[:40]
    rep = collect_features(sae, model, tok, windows, "layers.3.residual", n_top=5, width=6)
    live = int(rep.counts.argmax())
    labels.set(live, EVIL, note="<i>note</i>")
    labels.set(
        int(rep.counts.argsort()[-2]), "auto-suggested", source="auto", explainer="test-llm",
        scores={"detection": 0.71, "fuzzing": 0.55},
    )  # fmt: skip
    labels.save()
    out = tmp_path_factory.mktemp("site")
    assert main(["features", str(sae_dir), "--out", str(out), "--max-tokens", "2500"]) == 0
    return out / SITE_FILE, live


def test_site_is_self_contained_and_escapes_text(site):
    path, live = site
    text = path.read_text(encoding="utf-8")
    assert "window.__pwned" not in text.split('id="data"')[0]
    assert EVIL not in text  # the raw label never appears unescaped
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # no external assets
    data = _page_data(path)
    feats = data["features"]
    assert len(feats) == 768
    f = feats[live]
    assert f["label"] == EVIL and f["source"] == "human" and f["verified"]
    assert f["top"] and len(f["top"]) <= 10
    c = f["top"][0]
    assert c["a"][c["c"]] == pytest.approx(c["v"], rel=1e-3)  # centre token is the example
    assert c["v"] == pytest.approx(f["max"], rel=1e-3)
    assert all(str(t) in data["vocab"] for t in c["t"])
    assert "boost" not in f  # MiniLM (no unembedding): no token effects


def test_token_effects_equal_wdec_times_unembedding(gpt2_sae, gpt2_dir):
    sae = SparseAutoencoder.load(gpt2_sae[0])
    model, _ = load_model(str(gpt2_dir))
    b_ids, b_vals, _s_ids, s_vals = token_effects(sae, model, k=4, chunk=7)
    eff = sae.W_dec.detach() @ model.get_output_embeddings().weight.detach().T
    torch.testing.assert_close(b_vals, torch.topk(eff, 4, dim=1).values)
    torch.testing.assert_close(s_vals, torch.topk(eff, 4, dim=1, largest=False).values)
    torch.testing.assert_close(torch.gather(eff, 1, b_ids), b_vals)
    assert token_effects(sae, load_model("embedded")[0]) is None


def test_causal_site_has_token_effects(gpt2_sae, tmp_path):
    path = build_feature_site(gpt2_sae[0], tmp_path, max_tokens=1500)
    feats = _page_data(path)["features"]
    assert len(feats[0]["boost"]) == 10 and len(feats[0]["suppress"]) == 10


def _browser():
    """A headless chromium driven by selenium, or None when this machine has none (CI
    installs chromium and chromium-driver from Debian's packages, so there it must run)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if webdriver is None or not binary or not driver:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium, chromium-driver and selenium for this test")
        pytest.skip("no chromium/chromedriver/selenium on this machine")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_page_in_a_real_browser_search_and_highlighting(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path, live = site
    drv = _browser()
    try:
        drv.get(path.resolve().as_uri())
        # The list is built by the page's script; once in CI the first query ran before it
        # had (0 rows, not reproduced since), so wait for it, then check it exactly.
        WebDriverWait(drv, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.feat"))
        rows = drv.find_elements(By.CSS_SELECTOR, "tr.feat")
        assert len(rows) == 768, drv.get_log("browser")
        # sort by density (the default, descending): the first row is the busiest feature
        assert int(rows[0].get_attribute("data-id")) == live
        box = drv.find_element(By.ID, "search")
        box.send_keys("auto-sugg")
        rows = drv.find_elements(By.CSS_SELECTOR, "tr.feat")
        assert len(rows) == 1
        assert drv.find_element(By.ID, "count").text.startswith("1 of 768")
        box.clear()
        box.send_keys(str(live))
        drv.find_elements(By.CSS_SELECTOR, f'tr.feat[data-id="{live}"]')[0].click()
        panel = drv.find_element(By.ID, "feature")
        assert f"Feature {live}" in panel.text
        assert EVIL in panel.text  # shown as text, not markup
        assert drv.execute_script("return window.__pwned === undefined")
        hot = panel.find_elements(By.CSS_SELECTOR, ".ctx .tok.hot")
        # the page's orange, its alpha the activation over the context's peak (a browser
        # writes alpha 1, the peak token's, as rgb())
        style = hot[0].get_attribute("style") if hot else ""
        assert "rgba(232, 135, 14" in style or "rgb(232, 135, 14)" in style, style
        assert panel.find_elements(By.CSS_SELECTOR, "svg.hist rect")
        # the header sorts: by id ascending
        drv.find_element(By.ID, "search").clear()
        drv.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
        drv.find_element(By.CSS_SELECTOR, 'th[data-key="id"]').click()
        first = drv.find_elements(By.CSS_SELECTOR, "tr.feat")[0]
        assert first.get_attribute("data-id") == "0"
        # auto labels are shown as unverified
        drv.get(path.resolve().as_uri() + "#q=auto-sugg")
        WebDriverWait(drv, 20).until(
            lambda d: d.find_element(By.ID, "count").text.startswith("1 of")
        )
        drv.find_elements(By.CSS_SELECTOR, "tr.feat")[0].click()
        text = drv.find_element(By.ID, "feature").text
        assert "auto · unverified · detection 0.7100 · fuzzing 0.5500" in text
        assert "Explained by test-llm; not checked by a person" in text
        # scores filter and sort the list; status words search
        for query, n in (
            ("detection>0.7", 1),
            ("detect>0.8", 0),
            ("fuzz<0.6", 1),
            ("unverified", 1),
        ):
            box = drv.find_element(By.ID, "search")
            box.clear()
            box.send_keys(query)
            assert len(drv.find_elements(By.CSS_SELECTOR, "tr.feat")) == n, query
        drv.find_element(By.ID, "search").clear()
        drv.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
        drv.find_element(By.CSS_SELECTOR, 'th[data-key="detection"]').click()
        top = drv.find_elements(By.CSS_SELECTOR, "tr.feat")[0]
        assert top.text.split()[-1] == "0.7100"  # the scored feature first
        drv.get(path.resolve().as_uri() + f"#f={live}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "feature-browser.png"))
        errors = [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == [], errors
    finally:
        drv.quit()
