"""The AdVis explorer page: one self-contained HTML file (inline script, data inline).

No server, no network, no external script or font: the page opens from disk. The data
(``advis_explorer.page_data``) is embedded as JSON in a ``<script type="application/json">``
element with ``<``, ``>`` and ``&`` escaped, so no string from the data can close it; the
script writes every data string into the page with ``textContent``, never as HTML. The
title is HTML-escaped.
"""

import html
import json
from typing import Any, Mapping

_STYLE = """
body { font-family: sans-serif; margin: 16px; color: #222; }
.controls { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin-bottom: 12px; }
.panels { display: flex; gap: 14px; flex-wrap: wrap; }
figure { margin: 0; text-align: center; font-size: 13px; }
canvas { width: 160px; height: 160px; image-rendering: pixelated; border: 1px solid #ccc; }
.tables { display: flex; gap: 24px; flex-wrap: wrap; margin-top: 14px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
th { background: #f2f2f2; }
.note { color: #666; font-size: 12px; max-width: 900px; }
"""

_SCRIPT = r"""
'use strict';
const D = JSON.parse(document.getElementById('advis-data').textContent);
function bytes(s) {
  const b = atob(s); const a = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) a[i] = b.charCodeAt(i);
  return a;
}
const [N, S, E, H, W, C] = D.shape;
const K = D.num_classes;
const CLEAN = bytes(D.clean), ADV = bytes(D.x_adv), CAM = bytes(D.cam);
const GBVS = bytes(D.gbvs), GBVS_CLEAN = bytes(D.gbvs_clean), DIFF = bytes(D.diff);
const $ = (id) => document.getElementById(id);

function option(select, value, text) {
  const o = document.createElement('option'); o.value = value; o.textContent = text;
  select.appendChild(o);
}
D.images.forEach((im, i) => option($('image'), i, `test image ${im.index} (${D.class_names[im.label]})`));
D.models.forEach((m, s) => option($('source'), s, m));
option($('cam-class'), 'pred', 'predicted class');
D.class_names.forEach((c, k) => option($('cam-class'), k, c));
$('eps').max = E - 1;

function jet(v) {
  const f = (x) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v / 255 - x))));
  return [f(3), f(2), f(1)];
}
function coolwarm(v) {
  const t = (v - 127.5) / 127.5;
  return t >= 0 ? [255, Math.round(255 * (1 - t)), Math.round(255 * (1 - t))]
                : [Math.round(255 * (1 + t)), Math.round(255 * (1 + t)), 255];
}
function draw(id, pixel) {
  const canvas = $(id); canvas.width = W; canvas.height = H;
  const ctx = canvas.getContext('2d'); const img = ctx.createImageData(W, H);
  for (let p = 0; p < H * W; p++) {
    const [r, g, b] = pixel(p);
    img.data[4 * p] = r; img.data[4 * p + 1] = g; img.data[4 * p + 2] = b; img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}
function rgb(buf, offset) {
  return (p) => C === 3 ? [buf[offset + 3 * p], buf[offset + 3 * p + 1], buf[offset + 3 * p + 2]]
                        : [buf[offset + p], buf[offset + p], buf[offset + p]];
}

function update() {
  const i = +$('image').value, s = +$('source').value, e = +$('eps').value;
  $('eps-value').textContent = `${D.eps[e]}/255`;
  const advOff = (((i * S + s) * E + e) * H * W) * C;
  draw('clean', rgb(CLEAN, i * H * W * C));
  draw('adv', rgb(ADV, advOff));
  const top = D.top_class[i][s][e];
  const chosen = $('cam-class').value;
  const k = chosen === 'pred' ? top[s][0] : +chosen;
  $('cam-label').textContent = D.class_names[k];
  const camOff = (((i * S + s) * E + e) * K + k) * H * W;
  const base = rgb(ADV, advOff);
  draw('cam', (p) => { const a = base(p), m = jet(CAM[camOff + p]);
                       return [0, 1, 2].map((c) => Math.round(0.45 * a[c] + 0.55 * m[c])); });
  const mapOff = ((i * S + s) * E + e) * H * W;
  draw('gbvs', (p) => jet(GBVS[mapOff + p]));
  draw('diff', (p) => coolwarm(DIFF[mapOff + p]));
  D.models.forEach((m, t) => {
    const body = $(`top5-${t}`); body.textContent = '';
    $(`top5-title-${t}`).textContent = `${m} (${t === s ? 'white box' : 'black box'})`;
    top[t].forEach((c, j) => {
      const row = document.createElement('tr');
      const name = document.createElement('td'); name.className = 'cls';
      name.textContent = D.class_names[c];
      const prob = document.createElement('td'); prob.className = 'prob';
      const value = D.top_prob[i][s][e][t][j];
      prob.dataset.prob = String(value);
      prob.textContent = `${(100 * value).toFixed(2)} %`;
      row.append(name, prob); body.appendChild(row);
    });
  });
}
['image', 'source', 'cam-class'].forEach((id) => $(id).addEventListener('change', update));
$('eps').addEventListener('input', update);
update();
document.body.dataset.ready = '1';
"""


def _json_for_script(data: Mapping[str, Any]) -> str:
  """JSON that cannot end its ``<script>`` element or start markup inside it."""
  return (json.dumps(data, separators=(',', ':'))
          .replace('&', '\\u0026').replace('<', '\\u003c').replace('>', '\\u003e'))


def render(data: Mapping[str, Any], *, title: str) -> str:
  """The explorer page for ``advis_explorer.page_data`` output.

  Args:
    data: the page data (its strings may come from files or flags: they are escaped).
    title: the page's heading (escaped).

  Returns:
    The HTML document.
  """
  models = data['models']
  tables = ''.join(
      f'<table><thead><tr><th colspan="2" id="top5-title-{t}"></th></tr></thead>'
      f'<tbody id="top5-{t}"></tbody></table>' for t in range(len(models)))
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h2>{html.escape(title)}</h2>
<div class="controls">
  <label>image <select id="image"></select></label>
  <label>attack made on <select id="source"></select></label>
  <label>eps <input type="range" id="eps" min="0" max="0" step="1" value="0">
    <span id="eps-value"></span></label>
  <label>CAM of <select id="cam-class"></select></label>
</div>
<div class="panels">
  <figure><canvas id="clean"></canvas><figcaption>clean</figcaption></figure>
  <figure><canvas id="adv"></canvas><figcaption>adversarial (FGSM)</figcaption></figure>
  <figure><canvas id="cam"></canvas><figcaption>Grad-CAM: <span id="cam-label"></span></figcaption></figure>
  <figure><canvas id="gbvs"></canvas><figcaption>GBVS of the adversarial image</figcaption></figure>
  <figure><canvas id="diff"></canvas><figcaption>saliency difference (adv - clean)</figcaption></figure>
</div>
<div class="tables">{tables}</div>
<p class="note">Every value was computed ahead in one compiled call: FGSM on the model chosen
under "attack made on" (white box), shown to every model (black box for the others). Maps are
min-max scaled per map; the saliency difference is red where GBVS grew and blue where it
shrank, scaled per image over all eps.</p>
<script type="application/json" id="advis-data">{_json_for_script(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
