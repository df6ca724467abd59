"""The AdVis explorer page in a real browser (headless Chromium driven by playwright).

Chromium comes from the system (Debian's ``chromium``, installed by ``run.sh test``);
playwright's Python package drives it through ``executable_path``, so no browser is
downloaded. Without either the tests skip, unless ``ADVSAL_REQUIRE_BROWSER=1`` (set by
``run.sh test``) makes that a failure.
"""

import os
import pathlib
import shutil

import numpy as np
import pytest

from advsal_jax.studies import advis_explorer
from advsal_jax.studies import advis_page

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
# The flags a sandboxed machine without network needs: no sandbox (root), no background
# connections that would be refused.
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update',
                 '--disable-sync']
HOSTILE = '</script><script>window.PWNED = 1</script><b>bold</b>&amp;'


def _browser():
  try:
    from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  except ImportError:
    sync_playwright = None
  missing = ('playwright' if sync_playwright is None else
             'chromium' if CHROMIUM is None else None)
  if missing:
    if os.environ.get('ADVSAL_REQUIRE_BROWSER') == '1':
      pytest.fail(f'{missing} is missing but ADVSAL_REQUIRE_BROWSER=1')
    pytest.skip(f'{missing} is not installed')
  return sync_playwright


def synthetic(n=2, s=2, e=4, h=6, w=5, c=3, k=4, seed=0):
  """Page data of random arrays whose top-5 is known, with a hostile class name."""
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(k), size=(n, s, e, s))
  top_class = np.argsort(-probs, axis=-1)[..., :5]
  result = {'x_adv': rng.uniform(size=(n, s, e, h, w, c)),
            'top_class': top_class,
            'top_prob': np.take_along_axis(probs, top_class, axis=-1),
            'cam': rng.uniform(size=(n, s, e, k, h, w)),
            'gbvs': rng.uniform(size=(n, s, e, h, w)),
            'gbvs_clean': rng.uniform(size=(n, h, w))}
  cfg = advis_explorer.ExplorerConfig(models=tuple(f'model {i} <i>' for i in range(s)),
                                      images=tuple(range(n)), max_eps=e - 1, eps_step=1)
  names = (HOSTILE,) + tuple(f'class {i}' for i in range(1, k))
  data = advis_explorer.page_data(result, x=rng.uniform(size=(n, h, w, c)),
                                  labels=np.zeros(n, int), indices=np.arange(n), cfg=cfg,
                                  class_names=names)
  return data, result


def shown_top5(page, t):
  rows = page.locator(f'#top5-{t} tr')
  return ([rows.nth(j).locator('td.cls').text_content() for j in range(rows.count())],
          [float(rows.nth(j).locator('td.prob').get_attribute('data-prob'))
           for j in range(rows.count())])


def check_page(path: pathlib.Path, top_class, top_prob, class_names, screenshot=None):
  """Opens the page, moves the eps slider and the source, checks every top-5 shown."""
  sync_playwright = _browser()
  errors = []
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector('body[data-ready="1"]')
    n, s, e = top_class.shape[:3]
    for i in range(n):
      page.select_option('#image', str(i))
      for src in range(s):
        page.select_option('#source', str(src))
        page.focus('#eps')
        page.keyboard.press('Home')
        for eps in range(e):
          if eps:
            page.keyboard.press('ArrowRight')  # the slider moved as a user moves it
          assert page.input_value('#eps') == str(eps)
          for t in range(s):
            names, probs = shown_top5(page, t)
            assert names == [class_names[c] for c in top_class[i, src, eps, t]]
            np.testing.assert_allclose(probs, top_prob[i, src, eps, t], atol=1e-6)
            title = page.text_content(f'#top5-title-{t}')
            assert title.endswith('(white box)' if t == src else '(black box)')
    if screenshot is not None:
      page.screenshot(path=str(screenshot), full_page=True)
    pwned = page.evaluate('window.PWNED === undefined')
    requests_outside = page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name)")
    browser.close()
  assert not errors, errors
  assert pwned, 'a class name was executed as script'
  assert requests_outside == [], requests_outside


def test_page_shows_precomputed_top5_and_escapes_strings(tmp_path):
  data, result = synthetic()
  html = advis_page.render(data, title='<script>alert(1)</script> title')
  assert '<script>alert(1)</script>' not in html
  assert HOSTILE not in html  # the JSON block escapes < > &
  path = tmp_path / 'page.html'
  path.write_text(html)
  check_page(path, result['top_class'], result['top_prob'], data['class_names'])


def test_page_cam_dropdown_draws_the_chosen_class(tmp_path):
  data, result = synthetic()
  path = tmp_path / 'page.html'
  path.write_text(advis_page.render(data, title='t'))
  sync_playwright = _browser()
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.goto(path.resolve().as_uri())
    page.wait_for_selector('body[data-ready="1"]')
    pred = data['class_names'][result['top_class'][0, 0, 0, 0, 0]]
    assert page.text_content('#cam-label') == pred
    before = page.evaluate("Array.from(document.getElementById('cam').getContext('2d')"
                           ".getImageData(0, 0, 5, 6).data)")
    other = (result['top_class'][0, 0, 0, 0, 0] + 1) % 4
    page.select_option('#cam-class', str(other))
    assert page.text_content('#cam-label') == data['class_names'][other]
    after = page.evaluate("Array.from(document.getElementById('cam').getContext('2d')"
                          ".getImageData(0, 0, 5, 6).data)")
    browser.close()
  assert before != after


@pytest.mark.slow
def test_explorer_binary_page_in_chromium(tmp_path):
  """The real binary on two images and a short grid; its page shows its npz's values."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  _browser()
  out = tmp_path / 'explorer.html'
  root = pathlib.Path(__file__).resolve().parents[1]
  subprocess.run([sys.executable, str(root / 'experiments' / 'advis_explorer.py'),
                  '--images=0,3', '--max_eps=3', f'--output={out}'], check=True, cwd=root)
  arrays = np.load(out.with_suffix('.npz'))
  from advsal_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  names = data_lib.load('cifar10', 'test').class_names
  check_page(out, arrays['top_class'], arrays['top_prob'], names,
             screenshot=tmp_path / 'explorer.png')
  assert (tmp_path / 'explorer.png').stat().st_size > 10_000
