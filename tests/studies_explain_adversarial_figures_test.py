"""Study 001's Fig. 5 layout: every map titled with its class, above it, overlapping nothing."""

import numpy as np

from advsal_jax.studies import explain_adversarial_figures as study_figures


def test_fig5_titles_sit_above_their_maps_without_overlap(tmp_path, monkeypatch):
  drawn = []
  monkeypatch.setattr(study_figures.store, 'write_png',
                      lambda path, fig: drawn.append(fig.canvas.draw() or fig))
  monkeypatch.setattr(study_figures.figures.plt, 'close', lambda fig: None)
  rng = np.random.default_rng(0)
  n = 8
  images = rng.random((n, 32, 32, 3)).astype(np.float32)
  maps = rng.random((n, 32, 32)).astype(np.float32)
  rows = {'GBP': (maps, [f'GBP: automobile {j}' for j in range(n)]),
          'EGBP': (maps, [f'EGBP: automobile\nvs truck {j}' for j in range(n)])}
  study_figures._maps_with_predictions(images, [f'FGSM failed {j}' for j in range(n)], rows,
                                       tmp_path / 'figure5_maps.png')
  fig, = drawn
  renderer = fig.canvas.get_renderer()
  axes = fig.axes
  assert len(axes) == 3 * n
  boxes = [ax.get_window_extent(renderer) for ax in axes]
  titles = [ax.title for ax in axes]
  want = [f'FGSM failed {j}' for j in range(n)] + [t for _, ts in rows.values() for t in ts]
  assert sorted(t.get_text() for t in titles) == sorted(want)
  for ax, box, title in zip(axes, boxes, titles):
    tb = title.get_window_extent(renderer)
    assert tb.y0 >= box.y1 - 1, title.get_text()  # above its own image
    assert box.x0 - 1 <= (tb.x0 + tb.x1) / 2 <= box.x1 + 1, title.get_text()  # centred on it
    for other_box, other in zip(boxes, titles):
      assert not tb.overlaps(other_box), (title.get_text(), 'overlaps an image')
      if other is not title:
        assert not tb.overlaps(other.get_window_extent(renderer)), (
            title.get_text(), other.get_text())
