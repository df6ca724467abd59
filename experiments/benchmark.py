"""Benchmarks the model, every saliency method, every attack and whole study pipelines.

Writes ``config.json``, ``benchmark.json`` and ``benchmark.md`` (a table: images/s, compile
time, XLA and process memory per workload) to ``--output_dir``. The single-pass workloads are
also timed compiled with plain ``jax.jit`` (``--noplain_jit`` skips that). ``--compare_torch``
adds the PyTorch peers' images/s and the JAX/PyTorch ratio, ``--compare_lime`` the lime
package's on the ``lime`` workload. ``--profile=WORKLOAD`` writes a JAX profiler trace of one
call of that workload to ``<output_dir>/profile``. ``study004_localize`` also reports study
004's attack stage over ``--localize_batches`` batches: its wall time with the Felzenszwalb
segmentation overlapped, its compiled work alone, its host work alone and wall/compiled.
``study000_pipeline`` times study 000's whole per-batch pipeline (and its attack, maps and
metrics stages compiled apart); with ``--compare_torch`` against the same pipeline written with
torchattacks, Captum and per-pair scipy/skimage. ``train_classifier``, ``train_masker`` and
``train_detector`` time one optimizer step of each training loop; with ``--compare_torch``
against the same architecture, optimizer and batch in PyTorch.

Example (a quick run; the defaults are the full settings):
  python experiments/benchmark.py --batch_size=8 --repeats=1 --smoothgrad_samples=4 \
      --ig_steps=4 --lime_samples=50 --attack_steps=2 --cw_binary_search_steps=1 \
      --cw_max_iterations=10 --metric_pairs=500 --reference_pairs=50 --pipeline_batch_size=2 \
      --train_batch_size=8
"""

from absl import app
from absl import flags
from absl import logging

from advsal_jax.benchmarks import config
from advsal_jax.benchmarks import runner

_D = config.BenchmarkConfig()
_LIB = 'unset: the library default'
_MODEL = flags.DEFINE_string('model', _D.model, 'Registered model name or checkpoint directory.')
_RANDOM_INIT = flags.DEFINE_bool(
    'random_init', _D.random_init,
    'Freshly initialised weights of the registered --model on uniform random images (no '
    'checkpoint or data needed).')
_PLAIN = flags.DEFINE_bool(
    'plain_model', _D.plain_model,
    'Build --model from flax\'s stock layers (nn.Conv as is, nn.max_pool), as a user would '
    'write it, with the same weights.')
_BATCH = flags.DEFINE_integer('batch_size', _D.batch_size, 'Images per call.')
_WORKLOADS = flags.DEFINE_list(
    'workloads', list(_D.workloads),
    f'Workloads to run; default all: {",".join(config.WORKLOADS)}.')
_REPEATS = flags.DEFINE_integer('repeats', _D.repeats,
                                'Timed calls per workload after compilation; the median is '
                                'reported.')
_SEED = flags.DEFINE_integer('seed', _D.seed, 'PRNG seed.')
_SG_N = flags.DEFINE_integer('smoothgrad_samples', _D.smoothgrad_samples, 'SmoothGrad N.')
_SG_CHUNK = flags.DEFINE_integer('smoothgrad_chunk', _D.smoothgrad_chunk,
                                 f'SmoothGrad noisy copies per image at once (0: all; {_LIB}).')
_IG_STEPS = flags.DEFINE_integer('ig_steps', _D.ig_steps, 'Integrated Gradients steps.')
_IG_CHUNK = flags.DEFINE_integer('ig_chunk', _D.ig_chunk,
                                 f'IG path points per image at once (0: all; {_LIB}).')
_LIME_N = flags.DEFINE_integer('lime_samples', _D.lime_samples, 'LIME perturbed copies.')
_LIME_CHUNK = flags.DEFINE_integer('lime_chunk', _D.lime_chunk,
                                   f'LIME perturbed copies per image at once (0: all; {_LIB}).')
_ATTACK_STEPS = flags.DEFINE_integer(
    'attack_steps', _D.attack_steps,
    f'num_steps of BIM, PGD and MIM, and study 004\'s max_steps ({_LIB}).')
_CW_SEARCH = flags.DEFINE_integer('cw_binary_search_steps', _D.cw_binary_search_steps,
                                  f'Carlini-Wagner constants tried ({_LIB}).')
_CW_ITERS = flags.DEFINE_integer('cw_max_iterations', _D.cw_max_iterations,
                                 f'Carlini-Wagner Adam steps per constant ({_LIB}).')
_DF_ITERS = flags.DEFINE_integer('deepfool_max_iter', _D.deepfool_max_iter,
                                 f'DeepFool maximum steps ({_LIB}).')
_PAIRS = flags.DEFINE_integer('metric_pairs', _D.metric_pairs,
                              'Random 32x32 map pairs for study000_metrics.')
_REF_PAIRS = flags.DEFINE_integer('reference_pairs', _D.reference_pairs,
                                  'Pairs the per-pair scipy/skimage reference is timed on '
                                  '(then extrapolated).')
_LOCALIZE_BATCH = flags.DEFINE_integer(
    'localize_batch_size', _D.localize_batch_size,
    'Images per batch of study 004\'s attack stage in study004_localize (the study\'s '
    'default).')
_LOCALIZE_BATCHES = flags.DEFINE_integer(
    'localize_batches', _D.localize_batches,
    'Batches of study 004\'s attack stage study004_localize runs (over the first images of '
    '--batch_size).')
_PIPELINE_BATCH = flags.DEFINE_integer(
    'pipeline_batch_size', _D.pipeline_batch_size,
    'Images per call of study000_pipeline, the first of --batch_size (study 000\'s batch).')
_TRAIN_BATCH = flags.DEFINE_integer(
    'train_batch_size', _D.train_batch_size,
    'Images per step of the training workloads (the batch repeated to fill it); unset: each '
    'loop\'s default (classifier 128, masker 64, detector 64: study 003\'s).')
_COMPARE_TORCH = flags.DEFINE_bool(
    'compare_torch', _D.compare_torch,
    'Also time each workload\'s PyTorch peer (Captum, torchattacks; study000_pipeline: the '
    'PyTorch stack with scipy/skimage metrics; training: torch.optim steps) on the converted '
    'model, same images and targets, and report JAX/PyTorch (alexnet_cifar only; pip install '
    '-e ".[peers]" and pip install --no-deps torchattacks==3.5.1).')
_COMPARE_LIME = flags.DEFINE_bool(
    'compare_lime', _D.compare_lime,
    'Also time the lime package\'s LimeImageExplainer on the lime workload\'s segments and '
    'settings, its classifier_fn the same jitted model, and report ours/package (pip '
    'install -e ".[peers]").')
_LIME_PEER_IMAGES = flags.DEFINE_integer(
    'lime_peer_images', _D.lime_peer_images,
    'Images of the batch the lime package explains per timed call (one at a time).')
_PLAIN_JIT = flags.DEFINE_bool(
    'plain_jit', _D.plain_jit,
    f'Also time the single-pass workloads ({",".join(config.SINGLE_PASS)}) compiled with '
    'plain jax.jit (XLA\'s default options) beside advsal_jax.compilation.jit.')
_PROFILE = flags.DEFINE_string(
    'profile', _D.profile,
    'A workload to trace: one call after its timed calls is recorded with the JAX profiler '
    'into <output_dir>/profile (open perfetto_trace.json.gz at ui.perfetto.dev, or the '
    'directory with TensorBoard\'s profile plugin), with its optimised HLO in hlo.txt.')
_XLA_DEFAULTS = flags.DEFINE_bool(
    'xla_defaults', _D.xla_defaults,
    'Compile with XLA\'s default options instead of the package\'s per-backend choice '
    '(advsal_jax.compilation), to measure what that choice changes.')
_OUTPUT = flags.DEFINE_string('output_dir', None,
                              'Default: results/benchmark/<model>_b<batch_size>.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Offline data directory; default $ADVSAL_DATA_DIR, then tfds.')


def main(argv):
  del argv
  cfg = config.BenchmarkConfig(
      model=_MODEL.value, random_init=_RANDOM_INIT.value,
      plain_model=_PLAIN.value, batch_size=_BATCH.value,
      workloads=tuple(_WORKLOADS.value), repeats=_REPEATS.value, seed=_SEED.value,
      smoothgrad_samples=_SG_N.value, smoothgrad_chunk=_SG_CHUNK.value,
      ig_steps=_IG_STEPS.value, ig_chunk=_IG_CHUNK.value, lime_samples=_LIME_N.value,
      lime_chunk=_LIME_CHUNK.value, attack_steps=_ATTACK_STEPS.value,
      cw_binary_search_steps=_CW_SEARCH.value, cw_max_iterations=_CW_ITERS.value,
      deepfool_max_iter=_DF_ITERS.value, metric_pairs=_PAIRS.value,
      reference_pairs=_REF_PAIRS.value, localize_batch_size=_LOCALIZE_BATCH.value,
      localize_batches=_LOCALIZE_BATCHES.value, pipeline_batch_size=_PIPELINE_BATCH.value,
      train_batch_size=_TRAIN_BATCH.value, compare_torch=_COMPARE_TORCH.value,
      compare_lime=_COMPARE_LIME.value, lime_peer_images=_LIME_PEER_IMAGES.value,
      plain_jit=_PLAIN_JIT.value, profile=_PROFILE.value, xla_defaults=_XLA_DEFAULTS.value)
  out = runner.run(cfg, output_dir=_OUTPUT.value, data_dir=_DATA_DIR.value)
  logging.info('Wrote %s', out / 'benchmark.md')
  print(f'Wrote {out / "benchmark.md"}')


if __name__ == '__main__':
  app.run(main)
