"""The white-box attack on classifier + detector: references, effect, jit == eager, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import detection
from advsal_jax import saliency

from testing_utils import linear_apply, tanh_mlp, tanh_mlp_params, TinyNet

B, H, W, C, K = 4, 4, 4, 2, 3
X = np.random.default_rng(1).uniform(0.2, 0.8, size=(B, H, W, C)).astype(np.float32)
LABELS = np.array([0, 1, 2, 0], np.int32)
BUDGET = dict(eps=0.1, step_size=0.03, num_steps=4)


def _classifier():
  return tanh_mlp_params(H * W * C, K)


def _detector_params(seed=2):
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(H * W * C, 2)), jnp.float32),
          'b': jnp.zeros((1, 2), jnp.float32)}


def _constant_detector(params, x):
  """Logits that do not depend on x: the detector's gradient is zero."""
  return jnp.broadcast_to(params['b'], (x.shape[0], 2))


def _scores(detector_fn, params, x):
  logits = detector_fn(params, x)
  return np.asarray(logits[:, detection.ADVERSARIAL] - logits[:, detection.CLEAN])


def _attack(**kwargs):
  return attacks.whitebox_detector(tanh_mlp, _classifier(), X, LABELS, **{**BUDGET, **kwargs})


def test_without_detector_gradient_it_is_bim():
  bim = attacks.bim(tanh_mlp, _classifier(), X, LABELS, **BUDGET)
  for mode, extra in (('alternate', {}), ('joint', dict(detector_weight=0.0))):
    got = _attack(detector_fn=_constant_detector, detector_params=_detector_params(),
                  mode=mode, **extra)
    np.testing.assert_allclose(got, bim, atol=1e-6)
  # A joint step with all weight on a linear detector is a step on its sign(w) alone.
  params = _detector_params()
  got = _attack(detector_fn=linear_apply, detector_params=params, mode='joint',
                detector_weight=1.0, num_steps=1)
  direction = np.sign(np.asarray(params['w'][:, detection.CLEAN] -
                                 params['w'][:, detection.ADVERSARIAL])).reshape(1, H, W, C)
  np.testing.assert_allclose(got, np.clip(X + 0.03 * direction, 0, 1), atol=1e-6)


@pytest.mark.parametrize('mode', ['alternate', 'joint'])
def test_lowers_the_detector_score_and_fools_the_classifier(mode):
  params = _detector_params()
  x_cls = attacks.bim(tanh_mlp, _classifier(), X, LABELS, **BUDGET)
  x_wb = _attack(detector_fn=linear_apply, detector_params=params, mode=mode)
  assert _scores(linear_apply, params, x_wb).mean() < _scores(linear_apply, params, x_cls).mean()
  assert _scores(linear_apply, params, x_wb).mean() < _scores(linear_apply, params, X).mean()
  assert np.mean(np.argmax(tanh_mlp(_classifier(), x_wb), -1) != LABELS) > 0


def test_gradient_flows_through_the_detector_input():
  """Against a JSD detector the attack follows the transform (image and gradient channels)."""
  detector = detection.Detector(linear_apply, 'jsd', tanh_mlp)
  rng = np.random.default_rng(3)
  params = {'source': _classifier(),
            'detector': {'w': jnp.asarray(rng.normal(size=(2 * H * W * C, 2)), jnp.float32),
                         'b': jnp.zeros((1, 2), jnp.float32)}}
  x_wb = _attack(detector_fn=detector, detector_params=params, mode='joint',
                 detector_weight=1.0)
  assert _scores(detector, params, x_wb).mean() < _scores(detector, params, X).mean() - 1.0


@pytest.mark.parametrize('mode', ['alternate', 'joint'])
def test_jit_equals_eager(mode):
  fn = functools.partial(attacks.whitebox_detector, tanh_mlp, detector_fn=linear_apply,
                         mode=mode, num_steps=3)
  kwargs = dict(eps=0.1, step_size=0.03, detector_weight=0.3)
  eager = fn(_classifier(), X, LABELS, detector_params=_detector_params(), **kwargs)
  jitted = jax.jit(fn)(_classifier(), X, LABELS, detector_params=_detector_params(), **kwargs)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  assert eager.shape == X.shape and eager.dtype == X.dtype


@pytest.mark.parametrize('change,error,match', [
    (dict(mode='both'), ValueError, 'mode must be one of'),
    (dict(detector_fn=tanh_mlp, detector_params=tanh_mlp_params(H * W * C, 3)), ValueError,
     'detector_fn must return two logits'),
    (dict(detector_fn='detector'), TypeError, 'detector_fn must be a callable'),
    (dict(clean_class=2), ValueError, 'clean_class must be 0 or 1'),
    (dict(detector_weight=1.5), ValueError, r'detector_weight must lie in \[0, 1\]'),
    (dict(eps=-0.1), ValueError, 'eps must be >= 0'),
    (dict(num_steps=0), ValueError, 'num_steps must be >= 1'),
])
def test_errors_name_the_argument(change, error, match, compile_counter):
  kwargs = {'detector_fn': linear_apply, 'detector_params': _detector_params(), **change}
  before = compile_counter.compiles
  with pytest.raises(error, match=match):
    _attack(**kwargs)
  assert compile_counter.compiles == before


def test_gradient_flows_through_the_learnt_mask_of_spd():
  """Against SPD on a learnt masker the attack differentiates through ``m(x) * x``."""
  net = TinyNet(num_classes=K)
  variables = net.init(jax.random.key(0), jnp.zeros((1, H, W, C)))
  masker = saliency.Masker(net, ('stem', 'features'), width=4)
  masker_vars = saliency.init_masker(masker, variables, X, key=jax.random.key(1))
  detector = detection.Detector(linear_apply, 'spd', masker.apply)
  params = {'source': masker_vars, 'detector': _detector_params()}
  x_wb = attacks.whitebox_detector(net.apply, variables, X, LABELS, detector_fn=detector,
                                   detector_params=params, mode='joint', detector_weight=1.0,
                                   eps=0.1, step_size=0.05, num_steps=2)
  assert _scores(detector, params, x_wb).mean() < _scores(detector, params, X).mean()
