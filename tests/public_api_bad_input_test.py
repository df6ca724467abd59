"""Bad input over the whole public API: one table, one row per (function, kind of bad input).

The table ``TABLE`` is the documentation of what each exported function refuses. Every
callable exported by ``saliency``, ``attacks``, ``metrics``, ``detection`` (their ``__all__``),
``data``,
``checkpoints`` and ``perturbation`` (their ``__all__`` when they define one, else the public
functions and classes they define) has an entry; types and constants are listed in
``NOT_FUNCTIONS`` with a reason. ``test_every_exported_callable_has_a_row`` fails on a new
export without an entry.

A row is one of:

* ``Raises``: calling with ``arg=value`` raises ``error`` whose message names the argument
  (``match``), before anything is compiled (no XLA compilation happens). ``jit`` says what
  happens when the argument is traced under ``jax.jit``: ``TRACED`` (a shape/dtype check,
  raised while tracing, checked with ``jax.eval_shape``), ``UNCHECKED`` (a value check:
  traced values cannot be inspected, so the call traces without error and the bad value
  flows into the result), or ``None`` (a static or host-side argument).
* ``Accepts``: documented acceptance with conversion: the call with ``arg=value`` equals the
  call with ``arg=reference`` bit for bit. Images must be floating point (integer images
  raise a TypeError: uint8 in [0, 255] is never rescaled silently); float64 images are
  accepted and, with JAX's default (x64 disabled), computed in float32. Metrics accept
  integer and float64 maps and compute in float32.
* ``Propagates``: a function applied to traced values inside models or loops (an activation,
  an attack objective) does not check values; a NaN input gives a NaN output, never a
  confident number.
* ``Elsewhere``: the same assertion already lives in another test (named ``file::test``);
  it is not repeated here, and this module checks that the named test exists.
* ``NoArguments``: the function takes no argument that could be bad.

Missing files raise ``FileNotFoundError`` naming the path (as ``data.load`` documents).
A row may be marked ``xfail`` (strict) to name a check the library still lacks; it turns
into a failure (XPASS) once the check lands, so the mark is then removed. No row is marked
now.
"""

import dataclasses
import functools
import inspect
import pathlib
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advsal_jax import attacks
from advsal_jax import checkpoints
from advsal_jax import data
from advsal_jax import detection
from advsal_jax import metrics
from advsal_jax import perturbation
from advsal_jax import saliency

from testing_utils import grid_segments, TinyNet

MODULES = {'saliency': saliency, 'attacks': attacks, 'metrics': metrics, 'data': data,
           'checkpoints': checkpoints, 'perturbation': perturbation, 'detection': detection}
_TESTS_DIR = pathlib.Path(__file__).parent

B, H, W, C, K = 2, 8, 8, 3, 3
LAYER = 'features'
TRACED = 'raised while tracing'
UNCHECKED = 'not checked while tracing'

_RNG = np.random.default_rng(0)
X = _RNG.uniform(size=(B, H, W, C)).astype(np.float32)
TARGET = np.array([0, 2], np.int32)
ATTR = _RNG.normal(size=(B, H, W, C)).astype(np.float32)
MAPS = _RNG.uniform(size=(B, 16, 16)).astype(np.float32)
MAPS_B = np.clip(MAPS + 0.2 * _RNG.normal(size=MAPS.shape), 0, 1).astype(np.float32)
MASK_A, MASK_B = MAPS > 0.5, MAPS_B > 0.4
SEGMENTS = grid_segments(B, H, W)
LOGITS = _RNG.normal(size=(B, K)).astype(np.float32)
SAMPLE = _RNG.normal(size=12)
SAMPLE_LABELS = np.arange(12) % 2
SCORES = X[..., 0]
TIEBREAK = _RNG.uniform(size=(B, H, W)).astype(np.float32)
RANKS = np.broadcast_to(np.arange(H * W)[::-1].reshape(H, W), (B, H, W)).astype(np.int32)


# Row kinds.

@dataclasses.dataclass(frozen=True)
class Raises:
  """``arg=value`` raises ``error`` matching ``match`` before any compilation."""
  arg: str
  value: Any
  error: type[Exception]
  match: str
  jit: str | None = None
  xfail: str | None = None
  also: dict[str, Any] = dataclasses.field(default_factory=dict)  # Other arguments changed.


@dataclasses.dataclass(frozen=True)
class Accepts:
  """``arg=value`` is accepted: the result equals that of ``arg=reference`` (default: the
  entry's own argument) bit for bit."""
  arg: str
  value: Any
  why: str
  reference: Any = None
  xfail: str | None = None


@dataclasses.dataclass(frozen=True)
class Propagates:
  """``arg=value`` (holding NaN) is not checked by design; the output holds NaN."""
  arg: str
  value: Any
  why: str


@dataclasses.dataclass(frozen=True)
class Elsewhere:
  """Asserted by ``test`` ('file.py::test_name'); not repeated here."""
  test: str


@dataclasses.dataclass(frozen=True)
class NoArguments:
  """The function takes no argument."""
  why: str


@dataclasses.dataclass(frozen=True)
class TmpPath:
  """A path under the test's temporary directory, resolved when the row runs."""
  relative: str


@dataclasses.dataclass(frozen=True)
class Entry:
  """How to call one exported function well (``kwargs(tmp_path)``) and its bad-input rows."""
  kwargs: Callable[[pathlib.Path], dict[str, Any]]
  rows: dict[str, Any]
  consume: bool = False  # A generator: the call is ``next(fn(**kwargs))``.
  host: bool = False  # Runs on the host (numpy, scikit-image): cannot be traced.


# Values.

def _poke(a: np.ndarray, value: float) -> np.ndarray:
  a = np.array(a, copy=True)
  a.flat[1] = value
  return a


@functools.cache
def _tiny_net():
  model = TinyNet(num_classes=K)
  return model, jax.jit(model.init)(jax.random.key(0), np.zeros((1, H, W, C), np.float32))


def _classifier(**extra):
  def kwargs(_):
    model, variables = _tiny_net()
    return dict(apply_fn=model.apply, params=variables, x=X, target=TARGET, **extra)
  return kwargs


def _attack(**extra):
  def kwargs(_):
    model, variables = _tiny_net()
    return dict(apply_fn=model.apply, params=variables, x=X, labels=TARGET, **extra)
  return kwargs


@functools.cache
def _masker():
  model, variables = _tiny_net()
  masker = saliency.Masker(model, ('stem', LAYER), width=4)
  return masker, saliency.init_masker(masker, variables, X, key=jax.random.key(2))


def _plain(**values):
  return lambda _: dict(values)


def _linear_detector(variables, x):
  """A two-logit linear detector network of flattened inputs (flax-style variables)."""
  return x.reshape(x.shape[0], -1) @ variables['params']['w'] + variables['params']['b']


def _not_a_model(params, x):
  """Returns its input: not a classifier (no logits) and not a masker (no classify method)."""
  del params
  return x


_DETECTOR_VARS = {'params': {'w': np.linspace(-1, 1, H * W * C * 2, dtype=np.float32).reshape(
    H * W * C, 2), 'b': np.zeros((1, 2), np.float32)}}
_DETECTOR = detection.Detector(_linear_detector, 'id')
_DETECTOR_PARAMS = {'source': None, 'detector': _DETECTOR_VARS}
_DETECTION_LABELS = np.array([0, 1], np.int32)


def _detection_source(**extra):
  def kwargs(_):
    model, variables = _tiny_net()
    return dict(apply_fn=model.apply, params=variables, x=X, **extra)
  return kwargs


def _masker_source(_):
  return dict(apply_fn=_masker()[0].apply, params=_masker()[1], x=X)


def _adversarial_training(_):
  model, variables = _tiny_net()
  return dict(apply_fn=model.apply, params=variables, x=X, labels=TARGET, detector=_DETECTOR,
              detector_params=_DETECTOR_PARAMS, inputs=X, input_labels=_DETECTION_LABELS,
              key=jax.random.key(0), rounds=1, num_epochs=1, batch_size=2,
              attack=functools.partial(attacks.whitebox_detector, eps=0.1, step_size=0.05,
                                       num_steps=1))


# Row families.

CONTRACT = 'saliency_contract_test.py::test_bad_inputs'
ATTACK_CONTRACT = 'attacks_contract_test.py::test_bad_inputs_raise_before_compilation'


def _images(arg: str = 'x', base: np.ndarray = X, *, bounds: str = r'\[0\.0, 1\.0\]',
            jit: bool = True) -> dict[str, Any]:
  """NaN, inf, out of range, rank, integer, empty batch and float64 for an image argument."""
  traced, unchecked = (TRACED, UNCHECKED) if jit else (None, None)
  return {
      f'{arg}: NaN': Raises(arg, _poke(base, np.nan), ValueError, rf'\b{arg} must be finite',
                            unchecked),
      f'{arg}: inf': Raises(arg, _poke(base, np.inf), ValueError, rf'\b{arg} must be finite',
                            unchecked),
      f'{arg}: outside [0, 1]': Raises(arg, base + 1.5, ValueError,
                                       rf'\b{arg} must lie within bounds {bounds}', unchecked),
      f'{arg}: wrong rank': Raises(arg, base[0], ValueError,
                                   rf'\b{arg} must be a batch of images', traced),
      f'{arg}: integer': Raises(arg, (base * 255).astype(np.uint8), TypeError,
                                rf'\b{arg} must be floating point', traced),
      f'{arg}: batch of zero': Raises(arg, base[:0], ValueError,
                                      rf'\b{arg} must hold at least one image', traced),
      f'{arg}: float64': Accepts(arg, base.astype(np.float64), 'computed in float32'),
  }


def _labels(arg: str = 'target') -> dict[str, Any]:
  """Out of range, negative, wrong length and non-integer class indices."""
  return {
      f'{arg}: out of range': Raises(arg, np.array([0, K], np.int32), ValueError,
                                     rf'\b{arg} must lie in \[0, {K}\)', UNCHECKED),
      f'{arg}: negative': Raises(arg, np.array([0, -1], np.int32), ValueError,
                                 rf'\b{arg} must lie in \[0, {K}\)', UNCHECKED),
      f'{arg}: wrong length': Raises(arg, TARGET[:1], ValueError,
                                     rf'\b{arg} must be i32\[B\] with B={B}', TRACED),
      f'{arg}: non-integer': Raises(arg, TARGET.astype(np.float32), TypeError,
                                    rf'\b{arg} must be integer', TRACED),
  }


def _saliency_method(**specific) -> dict[str, Any]:
  """Rows of a registered saliency method: the contract test asserts rank and labels."""
  return {**_images(), **_labels(),
          'x: wrong rank': Elsewhere(CONTRACT),
          'target: out of range': Elsewhere(CONTRACT),
          'target: wrong length': Elsewhere(CONTRACT),
          'target: non-integer': Elsewhere(CONTRACT),
          **specific}


def _attack_rows(**specific) -> dict[str, Any]:
  """Rows of an attack: the attacks' contract test asserts NaN, bounds, labels, masks, budget."""
  rows = {**_images(), **_labels('labels'),
          'x: NaN': Elsewhere(ATTACK_CONTRACT),
          'x: outside [0, 1]': Elsewhere(ATTACK_CONTRACT),
          'labels: out of range': Elsewhere(ATTACK_CONTRACT),
          'labels: non-integer': Elsewhere(ATTACK_CONTRACT),
          'mask: wrong shape': Elsewhere(ATTACK_CONTRACT),
          'mask: not 0/1': Elsewhere(ATTACK_CONTRACT),
          'bounds: low >= high': Elsewhere(ATTACK_CONTRACT),
          'budget < 0': Elsewhere(ATTACK_CONTRACT)}
  return {**rows, **specific}


def _pair(a: str, b: str, *, base_a=MAPS, base_b=MAPS_B, match_rank: str,
          covered: str | None = None, traced: bool = True) -> dict[str, Any]:
  """Rows of a metric of two maps: non-finite, rank, shapes, empty, dtype; int/f64 accepted."""
  t, u = (TRACED, UNCHECKED) if traced else (None, None)
  rows = {
      f'{a}: NaN': Raises(a, _poke(base_a, np.nan), ValueError, rf'\b{a} contains NaN', u),
      f'{b}: inf': Raises(b, _poke(base_b, np.inf), ValueError, rf'\b{b} contains NaN', u),
      f'{a}: wrong rank': Raises(a, base_a[0, 0], ValueError, rf'\b{a} must have {match_rank}',
                                 t),
      'mismatched shapes': Raises(b, base_b[:, :12], ValueError,
                                  rf'\b{a} and {b} must have the same shape', t),
      f'{a}: batch of zero': Raises(a, base_a[:0], ValueError, rf'\b{a} must not be empty', t),
      f'{a}: complex': Raises(a, base_a.astype(np.complex64), TypeError,
                              rf'\b{a} must have a real dtype', t),
      f'{a}: integer': Accepts(a, np.round(base_a * 4).astype(np.int32), 'computed in float32',
                               reference=np.round(base_a * 4).astype(np.float32)),
      f'{a}: float64': Accepts(a, base_a.astype(np.float64), 'computed in float32'),
  }
  if covered:
    for case in (f'{a}: NaN', f'{b}: inf', f'{a}: wrong rank', 'mismatched shapes',
                 f'{a}: batch of zero', f'{a}: complex'):
      rows[case] = Elsewhere(covered)
  return rows


# The table: '<module>.<name>' -> Entry.

TABLE: dict[str, Entry] = {
    # Saliency methods (model, x, target).
    'saliency.gradient': Entry(_classifier(), _saliency_method(**{
        'x: integer': Elsewhere('saliency_gradients_test.py::test_validation_messages'),
        'target: negative': Elsewhere('saliency_gradients_test.py::test_validation_messages'),
        'apply_fn: not logits [B, K]': Elsewhere(
            'saliency_gradients_test.py::test_validation_messages')})),
    'saliency.gradient_x_input': Entry(_classifier(), _saliency_method()),
    'saliency.guided_backprop': Entry(_classifier(), _saliency_method()),
    'saliency.enhanced_guided_backprop': Entry(
        _classifier(contrast_class=np.array([1, 0], np.int32)), _saliency_method(**{
            'contrast_class: out of range': Elsewhere(
                'saliency_guided_test.py::test_enhanced_guided_backprop_matches_paper_formula'),
            'contrast_class: wrong length': Raises(
                'contrast_class', np.array([1], np.int32), ValueError,
                r'contrast_class must be i32\[B\]', TRACED),
            'contrast_class: non-integer': Raises(
                'contrast_class', np.array([1., 0.], np.float32), TypeError,
                'contrast_class must be integer', TRACED)})),
    'saliency.grad_cam': Entry(_classifier(layer=LAYER), _saliency_method(**{
        'layer: unknown': Elsewhere('saliency_cam_test.py::test_layer_lookup'),
        'layer: not a string': Elsewhere('saliency_cam_test.py::test_layer_lookup')})),
    'saliency.guided_grad_cam': Entry(_classifier(layer=LAYER), _saliency_method(**{
        'layer: unknown': Raises('layer', 'conv9', ValueError,
                                 "layer 'conv9' is not a layer of this model")})),
    'saliency.cam': Entry(_classifier(layer=LAYER), _saliency_method(**{
        'layer: unknown': Raises('layer', 'conv9', ValueError,
                                 "layer 'conv9' is not a layer of this model"),
        'dense: unknown': Elsewhere('saliency_cam_test.py::test_layer_lookup')})),
    'saliency.integrated_gradients': Entry(
        _classifier(num_steps=2, batch_size=2), _saliency_method(**{
            'num_steps < 1': Elsewhere('saliency_integrated_gradients_test.py::test_errors'),
            'rule: unknown': Elsewhere('saliency_integrated_gradients_test.py::test_errors'),
            'baseline: wrong shape': Elsewhere(
                'saliency_integrated_gradients_test.py::test_errors'),
            'baseline: NaN': Raises('baseline', _poke(X, np.nan), ValueError,
                                    'baseline must be finite', UNCHECKED),
            'baseline: outside [0, 1]': Raises('baseline', X - 1.5, ValueError,
                                               'baseline must lie within bounds', UNCHECKED),
            'batch_size < 1': Raises('batch_size', 0, ValueError, 'batch_size must be >= 1')})),
    'saliency.smoothgrad': Entry(
        _classifier(key=jax.random.key(1), num_samples=2), _saliency_method(**{
            'key: missing': Elsewhere('saliency_smoothgrad_test.py::test_key_errors'),
            'key: legacy uint32': Elsewhere('saliency_smoothgrad_test.py::test_key_errors'),
            'key: wrong shape': Elsewhere('saliency_smoothgrad_test.py::test_key_errors'),
            'num_samples < 1': Elsewhere('saliency_smoothgrad_test.py::test_key_errors'),
            'batch_size < 1': Raises('batch_size', 0, ValueError, 'batch_size must be >= 1'),
            'noise_level < 0': Raises('noise_level', -0.1, ValueError,
                                      'noise_level must be finite and >= 0'),
            'noise_level: NaN': Raises('noise_level', np.nan, ValueError,
                                       'noise_level must be finite'),
            'base: not callable': Raises('base', 'gradient', TypeError,
                                         'base must be a saliency method')})),
    'saliency.lime': Entry(
        _classifier(key=jax.random.key(1), segments=SEGMENTS, num_segments=4, num_samples=8),
        _saliency_method(**{
            'key: missing': Elsewhere(
                'saliency_lime_test.py::test_chunked_equals_unchunked_and_errors'),
            'segments: wrong shape': Elsewhere(
                'saliency_lime_test.py::test_chunked_equals_unchunked_and_errors'),
            'num_segments: missing under jit': Elsewhere(
                'saliency_lime_test.py::test_chunked_equals_unchunked_and_errors')})),
    'saliency.lime_explain': Entry(
        _classifier(key=jax.random.key(1), segments=SEGMENTS, num_segments=4, num_samples=8),
        {**_images(), **_labels(),
         'segments: non-integer': Raises('segments', SEGMENTS.astype(np.float32), TypeError,
                                         'segments must be integer', TRACED),
         'segments: negative': Raises('segments', SEGMENTS - 1, ValueError,
                                      r'segments must lie in \[0, 4\)', UNCHECKED),
         'segments: wrong shape': Raises('segments', SEGMENTS[:, :4], ValueError,
                                         r'segments must be i32\[B,H,W\]', TRACED),
         'num_segments < 1': Raises('num_segments', 0, ValueError,
                                    'num_segments must be >= 1'),
         'num_samples < 1': Raises('num_samples', -1, ValueError, 'num_samples must be >= 1'),
         'batch_size < 1': Raises('batch_size', 0, ValueError, 'batch_size must be >= 1'),
         'kernel_width <= 0': Raises('kernel_width', 0.0, ValueError,
                                     'kernel_width must be finite and > 0'),
         'ridge_alpha <= 0': Raises('ridge_alpha', -1.0, ValueError,
                                    'ridge_alpha must be finite and > 0'),
         'fill: wrong shape': Raises('fill', np.zeros(2, np.float32), ValueError,
                                     r'fill must be a scalar or f32\[C\]'),
         'fill: outside [0, 1]': Raises('fill', 2.0, ValueError, 'fill must lie within bounds'),
         'segmentation: unknown': Raises('segmentation', 'watershed', ValueError,
                                         'segmentation must be one of',
                                         also={'segments': None, 'num_segments': None}),
         'key: legacy uint32': Raises('key', jax.random.PRNGKey(0), TypeError,
                                      'key must be a typed PRNG key')}),
    'saliency.explain': Entry(_classifier(), {
        'name: unknown': Elsewhere('saliency_registry_test.py::test_explain_errors'),
        'key: missing': Elsewhere('saliency_registry_test.py::test_explain_errors'),
        'layer: missing': Elsewhere('saliency_registry_test.py::test_explain_errors'),
        'keyword: not taken by the method': Elsewhere(
            'saliency_registry_test.py::test_explain_errors'),
        'x, target: forwarded to the method': Elsewhere(CONTRACT)}),
    'saliency.learnt_saliency': Entry(
        lambda _: dict(apply_fn=_masker()[0].apply, params=_masker()[1], x=X, target=TARGET),
        {**_saliency_method(),
         'apply_fn: a classifier, not a masker': Raises(
             'apply_fn', lambda p, x: x, ValueError, 'needs the apply_fn and variables of a '
             'masking model')}),
    'saliency.gbvs': Entry(_plain(x=X, grid_size=8), {
        **{c: Elsewhere('saliency_gbvs_test.py::test_bad_arguments_name_the_argument')
           for c in ('x: NaN', 'x: outside [0, 1]', 'x: wrong rank', 'x: integer',
                     'x: channels not 1 or 3', 'grid_size, max_iter, batch_size < 1',
                     'sigma fractions outside (0, 1]', 'tol <= 0',
                     'dissimilarity, normalization: unknown', 'orientations: not numbers')},
        'x: inf': Raises('x', _poke(X, np.inf), ValueError, r'x must lie in \[0, 1\]',
                         UNCHECKED),
        'x: batch of zero': Raises('x', X[:0], ValueError, 'x must hold at least one',
                                   TRACED),
        'x: float64': Accepts('x', X.astype(np.float64), 'computed in float32')}),
    # Label-free helpers and post-processing.
    'saliency.saliency_difference': Entry(
        _plain(adv_map=MAPS[..., None], clean_map=MAPS_B[..., None]), {
            'mismatched shapes': Elsewhere('saliency_gbvs_test.py::test_differences_match_numpy'),
            'adv_map: NaN': Raises('adv_map', _poke(MAPS[..., None], np.nan), ValueError,
                                   'adv_map must be finite'),
        }),
    'saliency.log_ratio_difference': Entry(
        _plain(adv_map=MAPS[..., None], clean_map=MAPS_B[..., None]), {
            'mismatched shapes': Elsewhere('saliency_gbvs_test.py::test_differences_match_numpy'),
            'eps <= 0': Elsewhere('saliency_gbvs_test.py::test_differences_match_numpy'),
            'clean_map: NaN': Raises('clean_map', _poke(MAPS_B[..., None], np.nan), ValueError,
                                     'clean_map must be finite'),
            'adv_map: negative': Raises('adv_map', MAPS[..., None] - 2, ValueError,
                                        'adv_map must be non-negative'),
        }),
    'saliency.to_heatmap': Entry(_plain(attr=ATTR), {
        'reduce: unknown': Elsewhere('saliency_postprocess_test.py::test_to_heatmap_errors'),
        'attr: wrong rank': Elsewhere('saliency_postprocess_test.py::test_to_heatmap_errors'),
        'attr: NaN': Raises('attr', _poke(ATTR, np.nan), ValueError, 'attr must be finite',
                            UNCHECKED),
        'attr: batch of zero': Raises('attr', ATTR[:0], ValueError, 'attr must not be empty',
                                      TRACED),
        'attr: complex': Raises('attr', ATTR.astype(np.complex64), TypeError,
                                'attr must have a real dtype', TRACED),
        'attr: integer': Accepts('attr', np.round(ATTR).astype(np.int32), 'computed in float32',
                                 reference=np.round(ATTR).astype(np.float32))}),
    'saliency.normalize': Entry(_plain(maps=ATTR[..., 0]), {
        'mode: unknown': Elsewhere(
            'saliency_postprocess_test.py::test_normalize_constant_map_is_zero_and_errors'),
        'maps: no batch axis': Elsewhere(
            'saliency_postprocess_test.py::test_normalize_constant_map_is_zero_and_errors'),
        'maps: inf': Raises('maps', _poke(ATTR[..., 0], np.inf), ValueError,
                            'maps must be finite', UNCHECKED),
        'maps: batch of zero': Raises('maps', ATTR[:0, ..., 0], ValueError,
                                      'maps must not be empty', TRACED),
        'percentile: outside (50, 100]': Raises('percentile', 40.0, ValueError,
                                                r'percentile must lie in \(50, 100\]'),
        'maps: float64': Accepts('maps', ATTR[..., 0].astype(np.float64),
                                 'computed in float32')}),
    'saliency.heatmap': Entry(_plain(attr=ATTR, family='gradient'), {
        'family: unknown': Elsewhere('saliency_registry_test.py::test_heatmap_takes_a_method_name'),
        'attr: NaN': Raises('attr', _poke(ATTR, np.nan), ValueError, 'attr must be finite',
                            UNCHECKED),
        'attr: wrong rank': Raises('attr', ATTR[0], ValueError, r'attr must be f32\[B,H,W,C\]',
                                   TRACED)}),
    'saliency.segment_images': Entry(_plain(x=X, segmentation='felzenszwalb'), {
        **_images(jit=False),
        'segmentation: unknown': Elsewhere(
            'saliency_lime_test.py::test_chunked_equals_unchunked_and_errors'),
        'x: traced': Raises('x', None, TypeError, 'needs concrete x', TRACED)}, host=True),
    'saliency.guided_relu': Entry(_plain(x=ATTR), {
        'x: NaN': Propagates('x', _poke(ATTR, np.nan),
                             'an activation inside traced models, like jax.nn.relu')}),
    'saliency.with_guided_relu': Entry(_plain(fn=lambda x: x), {
        'fn: not callable': Raises('fn', 'model', TypeError, 'fn must be a JAX-traceable')}),
    # The masking model of learnt_saliency.
    'saliency.init_masker': Entry(
        lambda _: dict(masker=_masker()[0], classifier_vars=_tiny_net()[1], x=X,
                       key=jax.random.key(0)),
        {'x: wrong rank': Raises('x', X[0], ValueError, 'x must be a batch of images'),
         'x: integer': Raises('x', X.astype(np.uint8), TypeError, 'x must be floating point')}),
    'saliency.alternative_images': Entry(_plain(key=jax.random.key(0), x=X), {
        **_images(),
        'key: missing': Raises('key', None, ValueError, 'pass key='),
        'blur_prob: outside [0, 1]': Raises('blur_prob', 1.5, ValueError,
                                            r'blur_prob must lie in \[0, 1\]'),
        'noise_std < 0': Raises('noise_std', -0.1, ValueError, 'noise_std must be >= 0')}),
    'saliency.phi': Entry(_plain(x=X, m=X[..., :1], alt=1 - X), {
        'm: wrong shape': Raises('m', X[:, :4, :, :1], ValueError,
                                 r'm must be f32\[B,H,W,1\] or f32\[B,H,W,C\], broadcastable')}),
    'saliency.masker_loss': Entry(
        lambda _: dict(classify=_tiny_net()[0].apply, params=_tiny_net()[1], x=X,
                       mask=X[..., :1], target=TARGET, alt=1 - X), {
            'target: out of range': Raises('target', np.array([0, K], np.int32), ValueError,
                                           r'target must lie in \[0, 3\)')}),
    'saliency.classifier_variables': Entry(_plain(variables={'params': {}}), {
        'variables: not a mapping': Raises('variables', [{'params': {}}], TypeError,
                                           'variables must be flax variables')}),
    'saliency.decoder_params': Entry(_plain(variables={'params': {}}), {
        'variables: no params': Raises('variables', {'batch_stats': {}}, ValueError,
                                       "variables must be flax variables, a mapping of "
                                       "collections holding 'params'")}),
    'saliency.attach_classifier': Entry(
        _plain(decoder={'params': {}}, classifier_vars={'params': {}}), {
            'decoder: no params': Raises('decoder', {}, ValueError,
                                         'decoder must be flax variables')}),
    'saliency.masker_from_metadata': Entry(
        lambda _: dict(classifier=_tiny_net()[0], metadata={}), {
            'metadata: no masker': Raises('metadata', {}, ValueError,
                                          "metadata must hold 'masker'")}),
    'saliency.load_masker': Entry(_plain(name_or_path='no_such_masker'), {
        'name_or_path: no checkpoint': Raises('name_or_path', 'no_such_masker', ValueError,
                                              'no_such_masker')}),

    # Attacks.
    'attacks.fgsm': Entry(_attack(eps=0.1), _attack_rows(**{
        'objective: unknown': Elsewhere(
            'attacks_contract_test.py::test_attack_specific_validation'),
        'norm: unknown': Raises('norm', 'l1', ValueError, 'norm must be one of'),
        'eps: NaN': Raises('eps', np.nan, ValueError, 'eps must be finite', UNCHECKED),
        'eps: wrong shape': Raises('eps', np.full(B + 1, 0.1), ValueError,
                                   'eps must be a scalar', TRACED)})),
    'attacks.bim': Entry(_attack(eps=0.1, step_size=0.05, num_steps=2), _attack_rows(**{
        'norm: unknown': Elsewhere('attacks_contract_test.py::test_attack_specific_validation'),
        'num_steps: not an int': Elsewhere(
            'attacks_contract_test.py::test_attack_specific_validation'),
        'step_size: wrong shape': Elsewhere(
            'attacks_contract_test.py::test_attack_specific_validation'),
        'num_steps < 1': Raises('num_steps', -1, ValueError, 'num_steps must be >= 1'),
        'objective: unknown': Raises('objective', 'hinge', ValueError,
                                     'objective must be one of')})),
    'attacks.pgd': Entry(
        _attack(eps=0.1, step_size=0.05, num_steps=2, key=jax.random.key(1)), _attack_rows(**{
            'key: missing': Elsewhere('attacks_contract_test.py::test_attack_specific_validation'),
            'num_steps < 1': Raises('num_steps', -1, ValueError, 'num_steps must be >= 1'),
            'norm: unknown': Raises('norm', 'l0', ValueError, 'norm must be one of')})),
    'attacks.mim': Entry(_attack(eps=0.1, step_size=0.05, num_steps=2), _attack_rows(**{
        'num_steps < 1': Raises('num_steps', -1, ValueError, 'num_steps must be >= 1'),
        'decay < 0': Raises('decay', -1.0, ValueError, 'decay must be >= 0', UNCHECKED)})),
    'attacks.carlini_wagner_l2': Entry(
        _attack(binary_search_steps=1, max_iterations=3), _attack_rows(**{
            'initial_const <= 0': Elsewhere(
                'attacks_contract_test.py::test_attack_specific_validation'),
            'max_iterations < 1': Raises('max_iterations', -1, ValueError,
                                         'max_iterations must be >= 1'),
            'binary_search_steps < 1': Raises('binary_search_steps', 0, ValueError,
                                              'binary_search_steps must be >= 1'),
            'learning_rate <= 0': Raises('learning_rate', 0.0, ValueError,
                                         'learning_rate must be > 0', UNCHECKED)})),
    'attacks.deepfool': Entry(_attack(max_iter=2), _attack_rows(**{
        'overshoot < 0': Elsewhere('attacks_contract_test.py::test_attack_specific_validation'),
        'max_iter < 1': Raises('max_iter', -1, ValueError, 'max_iter must be >= 1'),
        'num_classes < 2': Raises('num_classes', 1, ValueError, 'num_classes must be >= 2')})),
    'attacks.jsma': Entry(_attack(targeted=True, gamma=0.1), _attack_rows(**{
        'targeted: False': Elsewhere('attacks_contract_test.py::test_attack_specific_validation'),
        'theta: 0': Elsewhere('attacks_contract_test.py::test_attack_specific_validation'),
        'output: unknown': Elsewhere('attacks_contract_test.py::test_attack_specific_validation'),
        'num_candidates < 2': Raises('num_candidates', 1, ValueError,
                                     'num_candidates must be >= 2')})),
    'attacks.evaluate_attack': Entry(
        lambda _: dict(apply_fn=_tiny_net()[0].apply, params=_tiny_net()[1], x=X,
                       x_adv=np.clip(X + 0.1, 0, 1), labels=TARGET, targeted=False), {
            **_labels('labels'),
            'x_adv: mismatched shape': Elsewhere(
                'attacks_evaluate_test.py::test_rejects_mismatched_shapes_and_bad_labels'),
            'labels: out of range': Elsewhere(
                'attacks_evaluate_test.py::test_rejects_mismatched_shapes_and_bad_labels'),
            'x: wrong rank': Raises('x', X[0], ValueError, 'x must be a batch of images',
                                    TRACED),
            'x: integer': Raises('x', X.astype(np.uint8), TypeError,
                                 'x must be floating point', TRACED),
            'x_adv: integer': Raises('x_adv', X.astype(np.uint8), TypeError,
                                     'x_adv must be floating point', TRACED),
            'x: batch of zero': Raises('x', X[:0], ValueError, 'x must hold at least one',
                                       TRACED),
            'x_adv: NaN': Raises('x_adv', _poke(X, np.nan), ValueError,
                                 'x_adv must be finite', UNCHECKED),
            'x: inf': Raises('x', _poke(X, np.inf), ValueError, 'x must be finite', UNCHECKED),
            'x_adv: float64': Accepts('x_adv', np.clip(X + 0.1, 0, 1).astype(np.float64),
                                      'computed in float32')}),
    'attacks.whitebox_detector': Entry(
        _attack(detector_fn=_DETECTOR, detector_params=_DETECTOR_PARAMS, eps=0.1,
                step_size=0.05, num_steps=1), {
            **_images(), **_labels('labels'),
            **{c: Elsewhere('attacks_detector_whitebox_test.py::test_errors_name_the_argument')
               for c in ('mode: unknown', 'detector_fn: not two logits',
                         'detector_fn: not callable', 'clean_class: 2', 'eps < 0')},
            'detector_weight > 1': Raises('detector_weight', 1.5, ValueError,
                                          r'detector_weight must lie in \[0, 1\]', UNCHECKED),
            'detector_weight < 0': Raises('detector_weight', -0.5, ValueError,
                                          'detector_weight must be finite and >= 0',
                                          UNCHECKED),
            'num_steps < 1': Raises('num_steps', 0, ValueError, 'num_steps must be >= 1'),
            'norm: unknown': Raises('norm', 'l1', ValueError, 'norm must be one of')}),
    'attacks.cross_entropy': Entry(_plain(logits=LOGITS, labels=TARGET), {
        'logits: wrong rank': Raises('logits', LOGITS[0], ValueError,
                                     r'logits must be f32\[B,K\]', TRACED),
        'labels: wrong length': Raises('labels', TARGET[:1], ValueError,
                                       r'labels must be i32\[B\]', TRACED),
        'labels: non-integer': Raises('labels', TARGET.astype(np.float32), TypeError,
                                      'labels must be integer', TRACED),
        'logits: NaN': Propagates('logits', _poke(LOGITS, np.nan),
                                  'runs on traced logits inside attack loops')}),
    'attacks.cw_margin': Entry(_plain(logits=LOGITS, labels=TARGET), {
        'logits: integer': Raises('logits', LOGITS.astype(np.int32), TypeError,
                                  'logits must be floating point', TRACED),
        'labels: wrong length': Raises('labels', TARGET[:1], ValueError,
                                       r'labels must be i32\[B\]', TRACED),
        'logits: NaN': Propagates('logits', _poke(LOGITS, np.nan),
                                  'runs on traced logits inside attack loops')}),
    'attacks.shrinking_while_loop': Entry(
        _plain(body=lambda c, k: c + k, active=lambda c, k: c < 3, carry=np.zeros(4),
               consts=np.ones(4), max_iter=5), {
            'shrink < 2': Elsewhere('attacks_loops_test.py::test_bad_shrink_is_rejected'),
            'max_iter < 0': Raises('max_iter', -1, ValueError, 'max_iter must be >= 0'),
            'carry: no batch axis': Raises('carry', np.float32(0), ValueError,
                                           'carry must be a non-empty pytree'),
            'consts: other batch size': Raises('consts', np.ones(3), ValueError,
                                               'consts must have the batch axis B=4')}),

    # Metrics of two maps.
    'metrics.spearman': Entry(_plain(a=MAPS, b=MAPS_B), _pair(
        'a', 'b', match_rank='at least 2 dimensions',
        covered='metrics_correlation_test.py::test_errors_name_the_argument')),
    'metrics.pearson': Entry(_plain(a=MAPS, b=MAPS_B), _pair(
        'a', 'b', match_rank='at least 2 dimensions',
        covered='metrics_correlation_test.py::test_errors_name_the_argument')),
    'metrics.cosine': Entry(_plain(a=MAPS, b=MAPS_B), _pair(
        'a', 'b', match_rank='at least 2 dimensions',
        covered='metrics_correlation_test.py::test_errors_name_the_argument')),
    'metrics.l2_distance': Entry(_plain(a=MAPS, b=MAPS_B), {
        **_pair('a', 'b', match_rank='at least 2 dimensions',
                covered='metrics_correlation_test.py::test_errors_name_the_argument'),
        'normalize: unknown': Elsewhere(
            'metrics_correlation_test.py::test_l2_distance_rejects_unknown_normalisation')}),
    'metrics.ssim': Entry(_plain(a=MAPS, b=MAPS_B, data_range=1.0), {
        **_pair('a', 'b', match_rank='3 to 4 dimensions'),
        'maps smaller than the window': Elsewhere('metrics_ssim_test.py::test_errors'),
        'data_range: inf': Raises('data_range', np.inf, ValueError,
                                  'data_range must be finite and > 0'),
        'sigma: NaN': Raises('sigma', np.nan, ValueError, 'sigma must be a finite positive'),
        'k1 < 0': Raises('k1', -0.01, ValueError, 'k1 and k2 must be finite and >= 0')}),
    'metrics.mean_ssim': Entry(_plain(a=MAPS, b=MAPS_B, data_range=1.0), {
        **_pair('a', 'b', match_rank='3 to 4 dimensions'),
        **{c: Elsewhere('metrics_ssim_test.py::test_errors')
           for c in ('b: NaN', 'mismatched shapes', 'a: wrong rank', 'data_range <= 0',
                     'data_range: missing', 'win_size: even', 'maps smaller than the window')},
        'k2: NaN': Raises('k2', np.nan, ValueError, 'k1 and k2 must be finite')}),
    'metrics.hog': Entry(_plain(images=MAPS), {
        **{c: Elsewhere('metrics_hog_test.py::test_errors')
           for c in ('images: NaN', 'images: wrong rank', 'images: smaller than a block',
                     'block_norm: unknown', 'pixels_per_cell: not a pair')},
        'images: inf': Raises('images', _poke(MAPS, np.inf), ValueError,
                              'images contains NaN or infinite', UNCHECKED),
        'images: batch of zero': Raises('images', MAPS[:0], ValueError,
                                        'images must not be empty', TRACED),
        'orientations < 1': Raises('orientations', 0, ValueError,
                                   'orientations must be a positive int'),
        'images: integer': Accepts('images', np.round(MAPS * 4).astype(np.int32),
                                   'computed in float32',
                                   reference=np.round(MAPS * 4).astype(np.float32))}),
    'metrics.hog_pearson': Entry(_plain(a=MAPS, b=MAPS_B), {
        **_pair('a', 'b', match_rank='3 to 4 dimensions'),
        'mismatched shapes': Elsewhere('metrics_hog_test.py::test_errors'),
        'cells_per_block: maps too small': Elsewhere('metrics_hog_test.py::test_errors')}),
    'metrics.hog_spearman': Entry(_plain(a=MAPS, b=MAPS_B), {
        **_pair('a', 'b', match_rank='3 to 4 dimensions'),
        'block_norm: unknown': Raises('block_norm', 'L3', ValueError,
                                      'block_norm must be one of')}),
    'metrics.sim_ratio': Entry(_plain(a=MAPS, b=MAPS_B), {
        **_pair('a', 'b', match_rank='at least 2 dimensions'),
        'mismatched shapes': Elsewhere('metrics_localization_test.py::test_errors'),
        'threshold < 0': Elsewhere('metrics_localization_test.py::test_errors'),
        'threshold: NaN': Raises('threshold', np.nan, ValueError,
                                 'threshold must be a finite number')}),
    'metrics.avg_diff': Entry(_plain(a=MAPS, b=MAPS_B), {
        **_pair('a', 'b', match_rank='at least 2 dimensions'),
        'b: NaN': Elsewhere('metrics_localization_test.py::test_errors')}),
    'metrics.top_k_mask': Entry(_plain(maps=MAPS, k=5), {
        **{c: Elsewhere('metrics_localization_test.py::test_errors')
           for c in ('k > pixels per map', 'k: wrong shape', 'k: non-integer', 'maps: NaN')},
        'k: negative': Raises('k', -1, ValueError, r'k must be in \[0, 256\]', UNCHECKED),
        'maps: wrong rank': Raises('maps', MAPS[0, 0], ValueError,
                                   'maps must have at least 2 dimensions', TRACED),
        'maps: batch of zero': Raises('maps', MAPS[:0], ValueError, 'maps must not be empty',
                                      TRACED),
        'maps: integer': Accepts('maps', np.round(MAPS * 4).astype(np.int32),
                                 'ranked as float32',
                                 reference=np.round(MAPS * 4).astype(np.float32))}),
    'metrics.jaccard': Entry(_plain(mask_a=MASK_A, mask_b=MASK_B), {
        'mask_b: not bool': Elsewhere('metrics_localization_test.py::test_errors'),
        'mask_a: not bool': Raises('mask_a', MAPS, TypeError, 'mask_a must be a bool mask',
                                   TRACED),
        'mismatched shapes': Raises('mask_b', MASK_B[:, :4], ValueError,
                                    'mask_a and mask_b must have the same shape', TRACED),
        'mask_a: wrong rank': Raises('mask_a', MASK_A[0, 0], ValueError,
                                     r'mask_a must be a non-empty \[B, \.\.\.\] mask', TRACED),
        'mask_a: batch of zero': Raises('mask_a', MASK_A[:0], ValueError,
                                        r'mask_a must be a non-empty', TRACED)}),
    'metrics.hamming_likeness': Entry(_plain(mask_a=MASK_A, mask_b=MASK_B), {
        'mismatched shapes': Elsewhere('metrics_localization_test.py::test_errors'),
        'mask_b: not bool': Raises('mask_b', MAPS_B, TypeError, 'mask_b must be a bool mask',
                                   TRACED),
        'mask_b: wrong rank': Raises('mask_b', MASK_B[0, 0], ValueError,
                                     r'mask_b must be a non-empty \[B, \.\.\.\] mask', TRACED)}),
    'metrics.l0_norm': Entry(_plain(delta=ATTR), {
        'delta: wrong rank with per_pixel': Elsewhere('metrics_norms_test.py::test_errors'),
        'atol < 0': Elsewhere('metrics_norms_test.py::test_errors'),
        'atol: NaN': Raises('atol', np.nan, ValueError, 'atol must be a finite number'),
        'delta: NaN': Raises('delta', _poke(ATTR, np.nan), ValueError, 'delta contains NaN',
                             UNCHECKED),
        'delta: batch of zero': Raises('delta', ATTR[:0], ValueError,
                                       'delta must not be empty', TRACED)}),
    'metrics.l2_norm': Entry(_plain(delta=ATTR), {
        'delta: NaN': Elsewhere('metrics_norms_test.py::test_errors'),
        'delta: inf': Raises('delta', _poke(ATTR, np.inf), ValueError, 'delta contains NaN',
                             UNCHECKED),
        'delta: wrong rank': Raises('delta', ATTR[0, 0, 0], ValueError,
                                    'delta must have at least 2 dimensions', TRACED),
        'delta: float64': Accepts('delta', ATTR.astype(np.float64), 'computed in float32')}),
    'metrics.linf_norm': Entry(_plain(delta=ATTR), {
        'delta: wrong rank': Elsewhere('metrics_norms_test.py::test_errors'),
        'delta: NaN': Raises('delta', _poke(ATTR, np.nan), ValueError, 'delta contains NaN',
                             UNCHECKED),
        'delta: batch of zero': Raises('delta', ATTR[:0], ValueError,
                                       'delta must not be empty', TRACED)}),
    'metrics.mann_whitney_u': Entry(_plain(x=SAMPLE, y=SAMPLE + 1), {
        'x: NaN': Elsewhere('metrics_stats_test.py::test_errors'),
        'y: wrong rank': Elsewhere('metrics_stats_test.py::test_errors'),
        'y: inf': Raises('y', _poke(SAMPLE, np.inf), ValueError, 'y contains NaN or infinite'),
        'x: empty': Raises('x', SAMPLE[:0], ValueError, 'x must be 1-D with at least 1'),
        'x: not numbers': Raises('x', np.array(['a', 'b']), TypeError,
                                 'x must be real numbers'),
        'method: unknown': Raises('method', 'bootstrap', ValueError, 'method')}),
    'metrics.bootstrap_ci': Entry(_plain(values=SAMPLE, rng=0, n_resamples=50), {
        **{c: Elsewhere('metrics_stats_test.py::test_errors')
           for c in ('values: fewer than 2', 'rng: not a seed', 'confidence: outside (0, 1)',
                     'method: unknown')},
        'values: NaN': Raises('values', _poke(SAMPLE, np.nan), ValueError,
                              'values contains NaN'),
        'n_resamples < 1': Raises('n_resamples', 0, ValueError,
                                  'n_resamples must be a positive int')}),
    'metrics.auroc': Entry(_plain(scores=SAMPLE, labels=SAMPLE_LABELS), {
        **{c: Elsewhere('metrics_detection_test.py::test_errors_name_the_argument')
           for c in ('scores: wrong rank', 'scores: not numbers', 'labels: other shape',
                     'labels: float')},
        'scores: NaN': Raises('scores', _poke(SAMPLE, np.nan), ValueError,
                              'scores contains NaN'),
        'labels: not 0/1': Raises('labels', SAMPLE_LABELS * 2, ValueError,
                                  'labels must be 0 or 1'),
        'labels: one class': Raises('labels', np.ones(12, np.int32), ValueError,
                                    'labels must hold at least one positive and one negative'),
        'labels: bool': Accepts('labels', SAMPLE_LABELS.astype(bool), '1 = True = positive')},
        host=True),
    'metrics.tpr_at_fpr': Entry(_plain(scores=SAMPLE, labels=SAMPLE_LABELS, fpr=0.25), {
        **{c: Elsewhere('metrics_detection_test.py::test_errors_name_the_argument')
           for c in ('scores: NaN', 'scores: wrong rank', 'labels: not 0/1',
                     'labels: one class')},
        'scores: inf': Raises('scores', _poke(SAMPLE, np.inf), ValueError,
                              'scores contains NaN or infinite'),
        'fpr: outside [0, 1]': Raises('fpr', -0.1, ValueError, r'fpr must be a number in \[0, 1\]'),
        'fpr: NaN': Raises('fpr', np.nan, ValueError, 'fpr must be a number'),
        'scores: integer': Accepts('scores', np.arange(12), 'ranked as numbers',
                                   reference=np.arange(12.0))}, host=True),

    # Detection.
    'detection.predicted_class': Entry(_detection_source(method='gradient'), {
        **_images(),
        'method: unknown': Raises('method', 'saliency', ValueError,
                                  'method must be a saliency method'),
        'apply_fn: a classifier where a masker is needed': Raises(
            'method', 'learnt_saliency', ValueError, 'must be a masking model')}),
    'detection.saliency_map_input': Entry(_masker_source, {
        **_images(),
        'method: unknown': Elsewhere('detection_inputs_test.py::test_errors_name_the_argument'),
        'apply_fn: not a masker': Raises('apply_fn', _not_a_model, ValueError,
                                         'must be a masking model')}),
    'detection.salient_pixels_input': Entry(_masker_source, {
        'x: NaN': Raises('x', _poke(X, np.nan), ValueError, 'x must be finite', UNCHECKED),
        'x: wrong rank': Raises('x', X[0], ValueError, 'x must be a batch of images', TRACED),
        'method: unknown': Raises('method', 'lrp', ValueError,
                                  'method must be a saliency method')}),
    'detection.image_input': Entry(_plain(x=X), _images()),
    'detection.jacobian_input': Entry(_detection_source(), {
        **_images(),
        'apply_fn: no logits': Raises('apply_fn', _not_a_model, ValueError,
                                      'apply_fn/params must be a classifier')}),
    'detection.detector_input': Entry(_plain(kind='id', apply_fn=None, params=None, x=X), {
        **_images(),
        'kind: unknown': Raises('kind', 'lid', ValueError, 'kind must be one of'),
        'keywords for a kind without a method': Raises(
            'kind', 'id', ValueError, "kind 'id' explains nothing", also={'layer': LAYER})}),
    'detection.create_detector': Entry(_plain(name='cnn_mnist', channels=1), {
        'name: unknown': Raises('name', 'resnet', ValueError, "Unknown model 'resnet'"),
        'channels < 1': Raises('channels', 0, ValueError, 'channels must be >= 1'),
        'channels: not an int': Raises('channels', 1.5, TypeError,
                                       'channels must be a Python int')}),
    'detection.init_detector': Entry(
        _plain(name='cnn_mnist', channels=1, key=jax.random.key(0)), {
            'channels < 1': Raises('channels', 0, ValueError, 'channels must be >= 1'),
            'key: missing': Raises('key', None, ValueError, 'pass key='),
            'key: legacy uint32': Raises('key', jax.random.PRNGKey(0), TypeError,
                                         'key must be a typed PRNG key')}),
    'detection.make_detection_set': Entry(
        _detection_source(attack=functools.partial(attacks.fgsm, eps=0.1), labels=TARGET,
                          key=jax.random.key(0)), {
            **_images(), **_labels('labels'),
            'attack: not callable': Raises('attack', 'fgsm', TypeError,
                                           'attack must be a callable'),
            'key: missing': Raises('key', None, ValueError, 'pass key='),
            'batch_size < 1': Raises('batch_size', 0, ValueError, 'batch_size must be >= 1')}),
    'detection.train_detector': Entry(
        _plain(apply_fn=_linear_detector, variables=_DETECTOR_VARS, inputs=X,
               labels=_DETECTION_LABELS, key=jax.random.key(0), num_epochs=1, batch_size=2), {
            'inputs: NaN': Raises('inputs', _poke(X, np.nan), ValueError,
                                  'inputs must be finite', UNCHECKED),
            'inputs: wrong rank': Raises('inputs', X[0], ValueError,
                                         'inputs must be a batch of images', TRACED),
            'labels: not 0/1': Raises('labels', np.array([0, 2], np.int32), ValueError,
                                      'labels must be CLEAN=1 or ADVERSARIAL=0', UNCHECKED),
            'labels: wrong length': Raises('labels', _DETECTION_LABELS[:1], ValueError,
                                           r'labels must be i32\[N\] with N=2', TRACED),
            'labels: float': Raises('labels', _DETECTION_LABELS.astype(np.float32), TypeError,
                                    'labels must be integer', TRACED),
            'batch_size > N': Raises('batch_size', 3, ValueError,
                                     'batch_size must be <= the number of inputs'),
            'num_epochs < 1': Raises('num_epochs', 0, ValueError, 'num_epochs must be >= 1'),
            'variables: no params': Raises('variables', {'w': np.zeros(2)}, ValueError,
                                           "variables must be flax variables holding 'params'"),
            'key: missing': Elsewhere('detection_detector_test.py::test_errors_name_the_argument'),
            'inputs: float64': Accepts('inputs', X.astype(np.float64), 'computed in float32')}),
    'detection.detector_scores': Entry(
        _plain(apply_fn=_linear_detector, params=_DETECTOR_VARS, inputs=X), {
            'inputs: inf': Raises('inputs', _poke(X, np.inf), ValueError,
                                  'inputs must be finite', UNCHECKED),
            'inputs: integer': Raises('inputs', X.astype(np.uint8), TypeError,
                                      'inputs must be floating point', TRACED),
            'batch_size < 1': Raises('batch_size', 0, ValueError, 'batch_size must be >= 1'),
            'apply_fn: not two logits': Elsewhere(
                'detection_detector_test.py::test_errors_name_the_argument'),
            'inputs: float64': Accepts('inputs', X.astype(np.float64), 'computed in float32')}),
    'detection.evaluate_detector': Entry(_plain(scores=SAMPLE, labels=SAMPLE_LABELS), {
        'labels: not 0/1': Raises('labels', SAMPLE_LABELS * 2, ValueError,
                                  'labels must be CLEAN=1 or ADVERSARIAL=0'),
        'scores: NaN': Raises('scores', _poke(SAMPLE, np.nan), ValueError,
                              'scores contains NaN'),
        'scores: wrong rank': Raises('scores', SAMPLE[None], ValueError, 'scores must be 1-D'),
        'fpr: outside [0, 1]': Raises('fpr', 2.0, ValueError, 'fpr must be a number')},
        host=True),
    'detection.adversarial_training': Entry(_adversarial_training, {
        'x: NaN': Raises('x', _poke(X, np.nan), ValueError, 'x must be finite'),
        'labels: out of range': Raises('labels', np.array([0, K], np.int32), ValueError,
                                       r'labels must lie in \[0, 3\)'),
        'detector: not a Detector': Raises('detector', _linear_detector, TypeError,
                                           'detector must be a detection.Detector'),
        'detector_params: keys': Raises('detector_params', {'detector': _DETECTOR_VARS},
                                        ValueError, 'detector_params must be a dict with keys'),
        'inputs: other shape': Raises('inputs', X[:, :4], ValueError,
                                      'inputs must be detector inputs of shape'),
        'input_labels: not 0/1': Raises('input_labels', np.array([0, 2], np.int32), ValueError,
                                        'input_labels must be CLEAN=1 or ADVERSARIAL=0'),
        'rounds < 1': Raises('rounds', 0, ValueError, 'rounds must be >= 1'),
        'key: missing': Raises('key', None, ValueError, 'pass key=')}),

    # Data.
    'data.offline_files': Entry(_plain(name='cifar10', split='test', root=TmpPath('data')), {
        'name: unknown dataset': Raises('name', 'imagenet', ValueError, "dataset 'imagenet'"),
        'split: unknown': Raises('split', 'validation', ValueError, "split 'validation'"),
        'root: None': Raises('root', None, TypeError, 'root must be a directory path')}),
    'data.load': Entry(_plain(name='cifar10', split='test', data_dir=TmpPath('data')), {
        'name, split: unknown': Elsewhere('data_test.py::test_unknown_name_or_split'),
        'data_dir: missing files': Elsewhere(
            'data_test.py::test_missing_dataset_says_where_it_looked'),
        'files: truncated, corrupt or hostile': Elsewhere(
            'hostile_files_test.py::test_truncated_cifar_batch_names_the_file')}),
    'data.checksums': Entry(_plain(name='cifar10', split='test', data_dir=TmpPath('data')), {
        'name: unknown dataset': Raises('name', 'imagenet', ValueError, "dataset 'imagenet'"),
        'data_dir: missing files': Raises('data_dir', TmpPath('empty'), FileNotFoundError,
                                          'cifar-10-batches-py/test_batch')}),
    'data.to_float': Entry(_plain(images=(X * 255).astype(np.uint8)), {
        'images: float': Raises('images', X, TypeError, 'images must be uint8')}),
    'data.batches': Entry(
        _plain(images=(X * 255).astype(np.uint8), labels=TARGET, batch_size=1), {
            'batch_size < 1': Elsewhere(
                'data_test.py::test_batches_shuffle_drop_remainder_and_range'),
            'labels: wrong length': Raises('labels', TARGET[:1], ValueError,
                                           r'images \(2\) and labels \(1\) differ'),
            'batch_size: not an int': Raises('batch_size', 1.5, TypeError,
                                             'batch_size must be an int')},
        consume=True),
    'data.augment_cifar': Entry(_plain(key=jax.random.key(0), x=X, pad=2), {
        'key: missing': Raises('key', None, TypeError, 'key'),
        'x: wrong rank': Raises('x', X[0], ValueError, 'x must be a batch of images', TRACED),
        'pad < 0': Raises('pad', -1, ValueError, 'pad must be >= 0')}),

    # Pixel-perturbation curves.
    'perturbation.pixel_counts': Entry(_plain(percentages=[0.0, 50.0], num_pixels=H * W), {
        'percentages: outside [0, 100]': Raises(
            'percentages', [0.0, 150.0], ValueError,
            r'percentages must be a 1-D sequence in \[0, 100\]'),
        'percentages: NaN': Raises('percentages', [np.nan], ValueError,
                                   'percentages must be a 1-D sequence'),
        'num_pixels < 1': Raises('num_pixels', 0, ValueError, 'num_pixels must be >= 1')},
        host=True),
    'perturbation.pixel_ranks': Entry(_plain(scores=SCORES, tiebreak=TIEBREAK), {
        'tiebreak: other shape': Raises('tiebreak', TIEBREAK[:, :4], ValueError,
                                        'tiebreak must have shape', TRACED),
        'scores: integer': Raises('scores', RANKS, TypeError, 'scores must be floating point',
                                  TRACED),
        'scores: batch of zero': Raises('scores', SCORES[:0], ValueError,
                                        'scores must be a non-empty batch', TRACED),
        'scores: NaN': Raises('scores', _poke(SCORES, np.nan), ValueError, 'scores must be finite',
                              UNCHECKED)}),
    'perturbation.replace_top': Entry(_plain(x=X, ranks=RANKS, fill=np.zeros(C, np.float32),
                                             k=3), {
        'x: wrong rank': Raises('x', X[0], ValueError, 'x must be a non-empty batch of images',
                                TRACED),
        'x: integer': Raises('x', X.astype(np.uint8), TypeError, 'x must be floating point',
                             TRACED),
        'ranks: other shape': Raises('ranks', RANKS[:, :4], ValueError, 'ranks must have shape',
                                     TRACED),
        'fill: does not broadcast': Raises('fill', np.zeros(2, np.float32), ValueError,
                                           "fill must broadcast to x's shape", TRACED),
        'x: NaN': Propagates('x', _poke(X, np.nan), 'a step of perturbation_curves, on traced '
                             'images')}),
    'perturbation.gaussian_blur': Entry(_plain(x=X, sigma=1.0), {
        'sigma <= 0': Raises('sigma', 0.0, ValueError, 'sigma must be a finite number > 0'),
        'sigma: NaN': Raises('sigma', np.nan, ValueError, 'sigma must be a finite number'),
        'x: wrong rank': Raises('x', X[0], ValueError, 'x must be a non-empty batch of images',
                                TRACED),
        'x: float64': Accepts('x', X.astype(np.float64), 'computed in float32')}),
    'perturbation.fill_images': Entry(_plain(x=X, fill='mean', mean=np.full(C, 0.5, np.float32)), {
        'x: wrong rank': Raises('x', X[0], ValueError, 'x must be a non-empty batch of images',
                                TRACED),
        'fill: unknown': Raises('fill', 'zero', ValueError, 'fill must be one of'),
        'mean: wrong length': Raises('mean', np.zeros(2, np.float32), ValueError,
                                     r'mean must be a colour f32\[3\]'),
        'keys: missing': Raises('fill', 'noise', ValueError, r'keys must be key\[2\]')}),
    'perturbation.perturbation_curves': Entry(
        lambda _: dict(apply_fn=_tiny_net()[0].apply, params=_tiny_net()[1], x=X,
                       scores=SCORES[None], tiebreak=TIEBREAK, fill=np.zeros_like(X),
                       num_pixels=np.array([0, 3], np.int32)), {
            'x: NaN': Raises('x', _poke(X, np.nan), ValueError, 'x must be finite', UNCHECKED),
            'x: integer': Raises('x', X.astype(np.uint8), TypeError, 'x must be floating point',
                                 TRACED),
            'scores: not [R,B,H,W]': Raises('scores', SCORES, ValueError,
                                            r'scores must be f32\[R,2,8,8\]', TRACED),
            'tiebreak: other shape': Raises('tiebreak', TIEBREAK[:, :4], ValueError,
                                            'tiebreak must have shape', TRACED),
            'fill: other shape': Raises('fill', X[:1], ValueError, "fill must have x's shape",
                                        TRACED),
            'num_pixels: out of range': Raises('num_pixels', np.array([0, H * W + 1], np.int32),
                                               ValueError, r'num_pixels must lie in \[0, 64\]',
                                               UNCHECKED),
            'num_pixels: not integer': Raises('num_pixels', np.array([0.0, 3.0]), ValueError,
                                              'num_pixels must be a 1-D integer array', TRACED)}),

    # Checkpoints.
    'checkpoints.default_dir': Entry(_plain(), {
        'no arguments': NoArguments('reads $ADVSAL_CHECKPOINT_DIR; load reports a missing '
                                    'checkpoint')}),
    'checkpoints.resolve': Entry(_plain(name_or_path='alexnet_cifar'), {
        'name_or_path: None': Raises('name_or_path', None, TypeError,
                                     'name_or_path must be a model name or a checkpoint')}),
    'checkpoints.load': Entry(_plain(name_or_path='alexnet_cifar'), {
        'name_or_path: no checkpoint': Elsewhere(
            'checkpoints_test.py::test_missing_checkpoint_is_a_clear_error'),
        'files: truncated, flipped or deleted': Elsewhere(
            'hostile_files_test.py::test_every_damaged_weight_file_is_named'),
        'metadata: another architecture': Elsewhere(
            'hostile_files_test.py::test_metadata_naming_another_architecture_is_refused')}),
    'checkpoints.save': Entry(
        lambda tmp: dict(directory=tmp / 'ckpt', model_name='cnn_mnist',
                         variables={'w': np.zeros(2, np.float32)}, metadata={}), {
            'model_name: unknown': Raises('model_name', 'resnet', ValueError,
                                          "model 'resnet'"),
            'metadata: not a dict': Raises('metadata', [], TypeError, 'metadata must be a mapping'),
            'step < 0': Raises('step', -1, ValueError, 'step must be an int >= 0')}),
    'checkpoints.record_weights_sha256': Entry(_plain(name_or_path=TmpPath('none')), {
        'name_or_path: no checkpoint': Raises('name_or_path', TmpPath('none'), ValueError,
                                              'metadata.json missing')}),
    'checkpoints.verify': Entry(_plain(name_or_path=TmpPath('none')), {
        'name_or_path: no checkpoint': Raises('name_or_path', TmpPath('none'), ValueError,
                                              'metadata.json missing'),
        'files: damaged, metadata broken': Elsewhere(
            'hostile_files_test.py::test_every_damaged_weight_file_is_named')}),
    'checkpoints.weights_sha256': Entry(_plain(directory=TmpPath('none'), step=0), {
        'directory: no such step': Raises('directory', TmpPath('none'), ValueError,
                                          'none/orbax/0 is not a directory')}),
    'checkpoints.manager': Entry(lambda tmp: dict(directory=tmp / 'm'), {
        'max_to_keep < 0': Raises('max_to_keep', -1, ValueError, 'max_to_keep')}),
    'checkpoints.save_state': Entry(
        lambda tmp: dict(mngr=checkpoints.manager(tmp / 'm'), step=0,
                         state={'w': np.zeros(2, np.float32)}), {
            'step < 0': Raises('step', -1, ValueError, 'step must be an int >= 0')}),
    'checkpoints.restore_state': Entry(
        lambda tmp: dict(mngr=checkpoints.manager(tmp / 'm'),
                         abstract_state={'w': jax.ShapeDtypeStruct((2,), jnp.float32)}), {
            'step: none saved': Raises('step', None, ValueError, 'No checkpoint step in'),
            'step: not saved': Raises('step', 7, FileNotFoundError, r'/7 not found')}),
}

# Exported names that are not functions (types, constants), with the reason they have no row.
NOT_FUNCTIONS = {
    'saliency.FAMILIES': 'read-only mapping',
    'saliency.LAYER_METHODS': 'frozenset of method names',
    'saliency.MASKER_METHODS': 'frozenset of method names',
    'saliency.METHODS': 'dict of the registered functions (each has its row)',
    'saliency.ONE_CHANNEL_FAMILIES': 'frozenset of family names',
    'saliency.REGISTRY': 'dict of MethodSpec',
    'saliency.STOCHASTIC_METHODS': 'frozenset of method names',
    'saliency.LimeResult': 'NamedTuple returned by lime_explain',
    'saliency.MethodSpec': 'dataclass; its checks: saliency_registry_test.py::'
                           'test_spec_is_read_only_and_checks_its_family',
    'saliency.Masker': 'flax module; its layers are checked when applied (init_masker row)',
    'saliency.MaskerLoss': 'frozen dataclass of loss weights, checked in __post_init__',
    'attacks.ATTACKS': 'dict of the attacks (each has its row)',
    'attacks.AttackEvaluation': 'NamedTuple returned by evaluate_attack',
    'attacks.Objective': 'type alias of the objective signature',
    'metrics.MannWhitneyResult': 'NamedTuple returned by mann_whitney_u',
    'metrics.MeanCI': 'NamedTuple returned by bootstrap_ci',
    'data.Dataset': 'NamedTuple returned by load',
    'data.DATA_DIR_ENV': 'constant',
    'data.DATASETS': 'constant',
    'data.SPLITS': 'constant',
    'data.MNIST_CLASSES': 'constant',
    'checkpoints.CheckpointError': 'exception type (a ValueError)',
    'checkpoints.CHECKPOINT_DIR_ENV': 'constant',
    'checkpoints.METADATA_FILE': 'constant',
    'perturbation.FILLS': 'constant',
    'detection.ADVERSARIAL': 'constant (label 0)',
    'detection.CLEAN': 'constant (label 1)',
    'detection.INPUT_KINDS': 'constant',
    'detection.DetectionMetrics': 'NamedTuple returned by evaluate_detector',
    'detection.Detector': 'frozen dataclass; its checks: detection_inputs_test.py::'
                          'test_errors_name_the_argument',
}


def _exported(module: types.ModuleType) -> set[str]:
  """``__all__``, or the public functions and classes the module defines."""
  if hasattr(module, '__all__'):
    return set(module.__all__)
  return {n for n, v in vars(module).items()
          if not n.startswith('_') and (inspect.isfunction(v) or inspect.isclass(v))
          and v.__module__ == module.__name__}


def _function(qualified: str) -> Callable[..., Any]:
  module, name = qualified.split('.')
  return getattr(MODULES[module], name)


def test_every_exported_callable_has_a_row():
  exported = {f'{m}.{n}' for m, module in MODULES.items() for n in _exported(module)}
  missing = sorted(exported - set(TABLE) - set(NOT_FUNCTIONS))
  assert not missing, f'exported without a row in TABLE (or a reason in NOT_FUNCTIONS): {missing}'
  assert not set(TABLE) & set(NOT_FUNCTIONS)
  stale = sorted(q for q in TABLE if q not in exported)
  assert not stale, f'rows for names that are not exported: {stale}'
  for qualified in NOT_FUNCTIONS:
    module, name = qualified.split('.')
    assert hasattr(MODULES[module], name), f'{qualified} in NOT_FUNCTIONS does not exist'
  for qualified in TABLE:
    assert callable(_function(qualified)) and not inspect.isclass(_function(qualified))
    assert TABLE[qualified].rows, f'{qualified} has no rows'


def _rows(kind, *, traced: bool = False) -> list:
  """``(qualified, case)`` of the rows of ``kind``; with ``traced``, the rows with a ``jit``.

  A missing value check (``xfail``) is expected to fail eagerly only: under jit a value
  check cannot run anyway.
  """
  params = []
  for qualified, entry in TABLE.items():
    for case, row in entry.rows.items():
      if not isinstance(row, kind) or (traced and not row.jit):
        continue
      xfail = getattr(row, 'xfail', None)
      if traced and row.jit == UNCHECKED:
        xfail = None
      marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
      params.append(pytest.param(qualified, case, marks=marks, id=f'{qualified}[{case}]'))
  return params


def _resolve(value: Any, tmp: pathlib.Path) -> Any:
  return tmp / value.relative if isinstance(value, TmpPath) else value


def _kwargs(qualified: str, tmp: pathlib.Path, **override) -> dict[str, Any]:
  kwargs = TABLE[qualified].kwargs(tmp)
  return {k: _resolve(v, tmp) for k, v in {**kwargs, **override}.items()}


def _call(qualified: str, kwargs: dict[str, Any]) -> Any:
  out = _function(qualified)(**kwargs)
  return next(out) if TABLE[qualified].consume else out


@pytest.fixture(scope='module', autouse=True)
def _models_built_before_counting_compilations():
  _tiny_net()
  _masker()


@pytest.mark.parametrize('qualified,case', _rows(Raises))
def test_bad_input_raises_before_compiling(qualified, case, tmp_path, compile_counter):
  row = TABLE[qualified].rows[case]
  if row.jit == TRACED and row.value is None:  # Only meaningful while tracing.
    pytest.skip('a traced-only case: see test_bad_input_under_jit')
  kwargs = _kwargs(qualified, tmp_path, **row.also, **{row.arg: row.value})
  jax.clear_caches()  # Whatever an earlier row compiled would be compiled again here.
  before = compile_counter.compiles
  with pytest.raises(row.error, match=row.match):
    _call(qualified, kwargs)
  assert compile_counter.compiles == before, 'compiled before refusing the input'


@pytest.mark.parametrize('qualified,case', _rows(Raises, traced=True))
def test_bad_input_under_jit(qualified, case, tmp_path):
  """Shape/dtype checks raise while tracing; value checks cannot see traced values."""
  row = TABLE[qualified].rows[case]
  kwargs = _kwargs(qualified, tmp_path, **row.also)
  value = kwargs[row.arg] if row.value is None else row.value
  traced = lambda v: _call(qualified, {**kwargs, row.arg: v})
  if row.jit == TRACED:
    with pytest.raises(row.error, match=row.match):
      jax.eval_shape(traced, value)
  else:
    out = jax.eval_shape(traced, value)
    assert all(hasattr(leaf, 'shape') for leaf in jax.tree.leaves(out))


@pytest.mark.parametrize('qualified,case', _rows(Accepts))
def test_accepted_input_equals_its_reference(qualified, case, tmp_path):
  """The function gets ``value`` itself (a concrete array closed over by the jitted call, so
  its checks and conversions run as in an eager call), compiled as one program."""
  row = TABLE[qualified].rows[case]
  kwargs = _kwargs(qualified, tmp_path)
  reference = kwargs[row.arg] if row.reference is None else row.reference
  run = (lambda f: f()) if TABLE[qualified].host else (lambda f: jax.jit(f)())
  got = run(lambda: _call(qualified, {**kwargs, row.arg: row.value}))
  want = run(lambda: _call(qualified, {**kwargs, row.arg: reference}))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert np.asarray(g).dtype == np.asarray(w).dtype
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize('qualified,case', _rows(Propagates))
def test_unchecked_nan_propagates(qualified, case, tmp_path):
  row = TABLE[qualified].rows[case]
  out = _call(qualified, _kwargs(qualified, tmp_path, **{row.arg: row.value}))
  assert np.isnan(np.asarray(out)).any()


@pytest.mark.parametrize('qualified,case', _rows(Elsewhere))
def test_covering_test_exists(qualified, case):
  row = TABLE[qualified].rows[case]
  path, name = row.test.split('::')
  assert f'def {name}(' in (_TESTS_DIR / path).read_text(), f'{row.test} not found'


@pytest.mark.parametrize('qualified,case', _rows(NoArguments))
def test_function_takes_no_arguments(qualified, case):
  assert not inspect.signature(_function(qualified)).parameters
