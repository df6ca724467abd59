"""PyTorch peers of the benchmark's workloads: the same work done with Captum and torchattacks.

With ``BenchmarkConfig.compare_torch``, ``runner.benchmark`` converts the flax model to
an equivalent ``torch.nn.Module`` (``to_torch``; ``TorchPeers.bind`` requires its
logits to match), and after timing each workload times the PyTorch tool that does the same
work (``PEERS``) on the same images, targets and weights, in the same process: one untimed
warm-up call, then ``repeats`` timed calls, the median reported. (JAX workloads are compiled
ahead of time, so their timed calls are warm too.) The record gains ``torch_items_per_s``,
``torch_median_s``, ``torch_tool``, ``torch_settings`` (what was matched and what differs),
``torch_agreement`` (how close the two results are), ``loadavg_1min`` and
``speedup_vs_torch`` (JAX items/s over PyTorch items/s). The ratio holds across runs only
on a machine that is not oversubscribed: PyTorch's OpenMP threads meet at a barrier after
every operator and wait for any thread the scheduler parks, so PyTorch slows far more than
XLA under load (an oversubscribed run inflates the ratios severalfold; the README gives a
measured case); the report flags workloads timed at a load above the core count.

PyTorch is not a dependency of the package: torch, captum and torchattacks are imported
inside the functions here. Install them with ``pip install -e '.[peers]'`` (torch, captum
and the lime package) and ``pip install --no-deps torchattacks==3.5.1``: torchattacks
declares torchvision and an old ``requests`` as requirements, imports neither, and the
registry's torchvision builds do not load beside the CPU build of torch.
"""

import collections
import importlib
import inspect
import os
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from advsal_jax import attacks
from advsal_jax import models
from advsal_jax import saliency
from advsal_jax.benchmarks import config
from advsal_jax.types import Params

PEERS: dict[str, str] = {
    'forward': 'torch nn.Module forward under no_grad',
    'gradient': 'captum Saliency(abs=False)',
    'smoothgrad': "captum NoiseTunnel(Saliency(abs=False)), nt_type='smoothgrad'",
    'guided_backprop': 'captum GuidedBackprop',
    'grad_cam': ('captum LayerGradCam(relu_attributions=True) + '
                 "LayerAttribution.interpolate('bilinear')"),
    'integrated_gradients': 'captum IntegratedGradients',
    'fgsm': 'torchattacks FGSM',
    'bim': 'torchattacks BIM',
    'pgd': 'torchattacks PGD',
    'mim': 'torchattacks MIFGSM',
    'carlini_wagner_l2': 'torchattacks CW',
    'deepfool': 'torchattacks DeepFool',
}
"""Workload name -> the PyTorch tool timed against it; other workloads have no peer."""

PARITY_TOLERANCE = 1e-3
"""Largest max |torch logits - flax logits| accepted on the benchmark batch."""

# Workloads whose JAX and PyTorch outputs should agree elementwise (no randomness).
_ELEMENTWISE = frozenset({'forward', 'gradient', 'guided_backprop', 'grad_cam',
                          'integrated_gradients', 'fgsm', 'bim', 'mim'})
# Our quadrature rules -> Captum's methods with the same nodes and weights (Captum's
# 'riemann_trapezoid' uses other nodes than our 'trapezoid').
_IG_METHODS = {'riemann_left': 'riemann_left', 'riemann_right': 'riemann_right',
               'riemann_midpoint': 'riemann_middle'}
# models.ConvBlock's BatchNorm momentum, flax's convention (the running average keeps 0.9 of
# itself); torch's momentum is the weight of the new batch, 1 - 0.9.
_BN_MOMENTUM = 0.9
_TORCHATTACKS_HINT = ('pip install --no-deps torchattacks==3.5.1 (it imports neither of its '
                      'declared torchvision/requests requirements)')


def import_peer(module: str, *, flag: str, what: str) -> Any:
  """A peer's module, imported when its comparison runs (peers are an optional extra).

  Args:
    module: e.g. 'torch' or 'lime.lime_image'.
    flag: the benchmark flag that needs it, for the message.
    what: the package's name in the message.

  Raises:
    ImportError: not installed (the message names ``flag`` and how to install it).
  """
  try:
    importlib.import_module(module.partition('.')[0])  # A blocked package hides its modules.
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{flag} needs {what}: pip install -e '.[peers]'.") from e


def import_torch() -> Any:
  """The torch module (``import_peer`` for --compare_torch)."""
  return import_peer('torch', flag='--compare_torch', what='PyTorch')


def to_torch(model_name: str, variables: Params) -> Any:
  """An eval-mode ``torch.nn.Module`` computing the same logits as registered model ``model_name``.

  ``convert`` of ``models.create(model_name)``.

  Args:
    model_name: registered model name; only 'alexnet_cifar' is supported.
    variables: its flax variables (``params`` and ``batch_stats``).

  Returns:
    A ``torch.nn.Sequential`` in eval mode: ``module(x f32[B,3,32,32]) -> f32[B,10]``.

  Raises:
    ValueError: another model (only AlexNetCifar has a converter).
    ImportError: PyTorch is not installed.
  """
  flax_model = models.create(model_name) if model_name in models.MODELS else None
  if type(flax_model) is not models.AlexNetCifar:  # pylint: disable=unidiomatic-typecheck
    raise ValueError(f'--compare_torch converts only alexnet_cifar (AlexNetCifar) to PyTorch, '
                     f'got model {model_name!r}; other architectures have no converter.')
  return convert(flax_model, variables)


def convert(flax_model: models.AlexNetCifar, variables: Params) -> Any:
  """An eval-mode ``torch.nn.Module`` computing the same logits as an ``AlexNetCifar``.

  The module takes NCHW float32 inputs (images in [0, 1], torchattacks' convention) and
  normalises them per channel inside with the flax model's ``mean`` and ``std``, as the flax
  models do. Conv kernels HWIO become OIHW, BatchNorm uses the running statistics and
  flax's epsilon and momentum (``.train()`` gives flax's ``train=True``), the first dense
  kernel is permuted from flax's NHWC flatten order to torch's NCHW one, and every ReLU is
  its own ``nn.ReLU`` module (Captum's GuidedBackprop hooks ReLU modules). The post-ReLU
  output of stage ``k`` is the submodule ``conv{k}``, the layer of the flax model's
  ``conv{k}``. Any input channel count and number of classes (a detector's) converts.

  Args:
    flax_model: an ``AlexNetCifar`` (e.g. ``models.create('alexnet_cifar')`` or
      ``detection.create_detector('alexnet_cifar', channels)``).
    variables: its flax variables (``params`` and ``batch_stats``).

  Returns:
    A ``torch.nn.Sequential`` in eval mode: ``module(x f32[B,C,H,W]) -> f32[B,K]``.

  Raises:
    ValueError: ``flax_model`` is not an ``AlexNetCifar``.
    ImportError: PyTorch is not installed.
  """
  if type(flax_model) is not models.AlexNetCifar:  # pylint: disable=unidiomatic-typecheck
    raise ValueError(f'only AlexNetCifar converts to PyTorch, got {type(flax_model).__name__}.')
  torch = import_torch()
  tnn = torch.nn
  params, stats = variables['params'], variables['batch_stats']
  epsilon = nn.BatchNorm.epsilon  # ConvBlock keeps flax's default.

  def tensor(a, *transpose):
    a = np.asarray(a, np.float32)
    return torch.from_numpy(np.array(a.transpose(*transpose) if transpose else a))

  class Normalize(tnn.Module):
    """(x - mean) / std per channel of NCHW images."""

    def __init__(self, mean, std):
      super().__init__()
      self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
      self.register_buffer('std', torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x):
      return (x - self.mean) / self.std

  layers = collections.OrderedDict(normalize=Normalize(flax_model.mean, flax_model.std))
  hw = flax_model.input_hw
  for i in range(len(flax_model.widths)):
    name = f'conv{i + 1}'
    kernel = np.asarray(params[name]['conv']['kernel'])  # HWIO
    conv = tnn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2],
                      padding=kernel.shape[0] // 2, bias=False)  # 'SAME' for odd 3x3.
    conv.weight.data = tensor(kernel, 3, 2, 0, 1)
    bn = tnn.BatchNorm2d(kernel.shape[3], eps=epsilon, momentum=1 - _BN_MOMENTUM)
    bn.weight.data = tensor(params[name]['bn']['scale'])
    bn.bias.data = tensor(params[name]['bn']['bias'])
    bn.running_mean.data = tensor(stats[name]['bn']['mean'])
    bn.running_var.data = tensor(stats[name]['bn']['var'])
    layers[name] = tnn.Sequential(collections.OrderedDict(conv=conv, bn=bn, relu=tnn.ReLU()))
    if i in (0, 1, 4):  # AlexNetCifar's pooling stages.
      layers[f'pool{i + 1}'] = tnn.MaxPool2d(2)
      hw = (hw[0] // 2, hw[1] // 2)
  channels = flax_model.widths[-1]
  fc1 = np.asarray(params['fc1']['kernel'])  # [(h, w, c) flattened, hidden]
  fc1 = fc1.reshape(*hw, channels, -1).transpose(2, 0, 1, 3).reshape(fc1.shape)
  layers['flatten'] = tnn.Flatten()
  layers['fc1'] = tnn.Linear(*fc1.shape)
  layers['fc1'].weight.data = tensor(fc1, 1, 0)
  layers['fc1'].bias.data = tensor(params['fc1']['bias'])
  layers['fc1_relu'] = tnn.ReLU()
  logits = np.asarray(params['logits']['kernel'])
  layers['logits'] = tnn.Linear(*logits.shape)
  layers['logits'].weight.data = tensor(logits, 1, 0)
  layers['logits'].bias.data = tensor(params['logits']['bias'])
  return tnn.Sequential(layers).eval()


def versions() -> dict[str, str | None]:
  """Versions of torch, captum and torchattacks (None where not installed)."""
  out = {}
  for name in ('torch', 'captum', 'torchattacks'):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = None
  return out


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, Any], Any]:
  """Times ``repeats`` calls of ``fn`` (warm it up first).

  Returns:
    ``({'median_s', 'times_s'}, the last call's output)``.
  """
  times, output = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    output = fn()
    times.append(time.perf_counter() - start)
  return {'median_s': statistics.median(times), 'times_s': times}, output


def warm_up(module: Any, fn: Callable[[], Any]) -> tuple[int, float]:
  """One untimed call of ``fn`` that counts the calls of ``module`` (a ``torch.nn.Module``).

  Returns:
    ``(model calls per call of fn, seconds the call took)``.
  """
  calls = [0]

  def count(*_):
    calls[0] += 1

  hook = module.register_forward_pre_hook(count)
  try:
    start = time.perf_counter()
    fn()
    return calls[0], time.perf_counter() - start
  finally:
    hook.remove()


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
  return {k: p.default for k, p in inspect.signature(fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


class TorchPeers:
  """The converted model, the batch as tensors and the peer of each workload.

  Attributes:
    module: the ``to_torch`` module.
    versions: of torch, captum and torchattacks.
  """

  def __init__(self, model_name: str, variables: Params, workloads: tuple[str, ...], *,
               seed: int):
    """Imports the tools the ``workloads`` need and converts the model (no JAX compilation).

    Args:
      model_name: registered model name (only 'alexnet_cifar').
      variables: its flax variables.
      workloads: the workloads that will run.
      seed: seeds torch's global generator, which Captum's noise and torchattacks' random
        start draw from.

    Raises:
      ImportError: torch, captum or (for attack workloads and ``study000_pipeline``)
        torchattacks missing.
      ValueError: a model other than alexnet_cifar.
    """
    self.module = to_torch(model_name, variables)
    torch = self._torch = import_torch()
    try:
      import captum.attr  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("--compare_torch needs captum: pip install -e '.[peers]'.") from e
    self._captum = captum.attr
    self._ta = None
    if (any(w in attacks.ATTACKS and w in PEERS for w in workloads)
        or config.PIPELINE_WORKLOAD in workloads):
      try:
        import torchattacks  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(f'--compare_torch with attack or pipeline workloads needs '
                          f'torchattacks: {_TORCHATTACKS_HINT}.') from e
      self._ta = torchattacks
    self.versions = versions()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    self._x_np = self._x = self._x_grad = self._target_np = self._target = None

  def bind(self, x: np.ndarray, target: np.ndarray,
           flax_logits: jax.typing.ArrayLike) -> dict[str, Any]:
    """Takes the benchmark batch and checks the converted model's logits on it.

    Args:
      x: f32[B,H,W,C] in [0, 1], the benchmark batch.
      target: i32[B] the flax model's predictions (saliency targets and attack labels).
      flax_logits: f32[B,K] the flax model's logits on ``x``.

    Returns:
      The environment entry: versions, torch threads, ``parity_max_abs_logit_diff``.

    Raises:
      ValueError: the logits differ by more than ``PARITY_TOLERANCE``.
    """
    torch = self._torch
    self._x_np = np.asarray(x, np.float32)
    self._x = torch.from_numpy(np.array(self._x_np.transpose(0, 3, 1, 2)))
    # Captum warns on inputs that do not require gradients; it only reads them.
    self._x_grad = self._x.clone().requires_grad_()
    self._target_np = np.asarray(target)
    self._target = torch.from_numpy(self._target_np.astype(np.int64))
    with torch.no_grad():
      logits = self.module(self._x).numpy()
    diff = float(np.max(np.abs(logits - np.asarray(flax_logits))))
    if not diff <= PARITY_TOLERANCE:
      raise ValueError(f'the converted PyTorch model disagrees with the flax model: max '
                       f'|logit difference| {diff:.3g} > {PARITY_TOLERANCE} on the benchmark '
                       'batch, so a timing comparison would not be of the same model.')
    return {**self.versions, 'torch_num_threads': torch.get_num_threads(),
            'parity_max_abs_logit_diff': diff, 'parity_tolerance': PARITY_TOLERANCE}

  def _captum_peer(self, name: str, hp: dict[str, Any]
                   ) -> tuple[Callable[[], Any], dict[str, Any]]:
    torch, ca, module, t = self._torch, self._captum, self.module, self._target
    x = self._x_grad
    batch = x.shape[0]
    if name == 'forward':
      def run():
        with torch.no_grad():
          return module(self._x)
      return run, {}
    if name == 'gradient':
      method = ca.Saliency(module)
      return lambda: method.attribute(x, target=t, abs=False), {'abs': False}
    if name == 'guided_backprop':
      method = ca.GuidedBackprop(module)
      return lambda: method.attribute(x, target=t), {}
    if name == 'grad_cam':
      method = ca.LayerGradCam(module, getattr(module, hp['layer']))
      size = tuple(x.shape[2:])
      return (lambda: ca.LayerAttribution.interpolate(
          method.attribute(x, target=t, relu_attributions=True), size, 'bilinear'),
              {'layer': f'{hp["layer"]} (post-ReLU output)', 'interpolate': 'bilinear'})
    if name == 'smoothgrad':
      # Captum takes one noise std for the whole batch; ours is per image:
      # noise_level * (max(x_b) - min(x_b)). The batch mean of ours is used.
      ranges = self._x_np.max(axis=(1, 2, 3)) - self._x_np.min(axis=(1, 2, 3))
      sigmas = hp['noise_level'] * ranges
      method = ca.NoiseTunnel(ca.Saliency(module))
      n, chunk = hp['num_samples'], hp['batch_size']
      kwargs = dict(nt_type='smoothgrad_sq' if hp['squared'] else 'smoothgrad', nt_samples=n,
                    nt_samples_batch_size=chunk, stdevs=float(sigmas.mean()), abs=False)
      ours = n if chunk is None else -(-n // chunk) * chunk  # We pad the last chunk.
      note = ('captum draws noise with one std for the batch: the mean of our per-image '
              'sigma = noise_level * (max - min)')
      if ours != n:
        note += (f'; ours evaluates {ours} noisy copies per image (the last chunk is padded), '
                 f'captum {n}')
      return lambda: method.attribute(x, target=t, **kwargs), {
          **kwargs, 'our_sigma_range': [float(sigmas.min()), float(sigmas.max())],
          'gradients_per_image': {'jax': ours, 'torch': n}, 'note': note}
    if name == 'integrated_gradients':
      if hp['rule'] not in _IG_METHODS:
        raise ValueError(f'no Captum method has the nodes of rule {hp["rule"]!r}.')
      if hp.get('baseline') is not None:
        raise ValueError('the Captum peer uses the default all-zero baseline only.')
      chunk = hp['batch_size']
      kwargs = dict(n_steps=hp['num_steps'], method=_IG_METHODS[hp['rule']],
                    internal_batch_size=None if chunk is None else chunk * batch)
      method = ca.IntegratedGradients(module)
      return (lambda: method.attribute(x, target=t, **kwargs),
              {**kwargs, 'baselines': 'zeros (default)'})
    raise KeyError(name)

  def _attack_peer(self, name: str, hp: dict[str, Any]
                   ) -> tuple[Callable[[], Any], dict[str, Any]]:
    ta, module = self._ta, self.module
    if name == 'fgsm':
      attack, settings = ta.FGSM(module, eps=hp['eps']), {'eps': hp['eps']}
    elif name in ('bim', 'pgd', 'mim'):
      settings = dict(eps=hp['eps'], alpha=hp['step_size'], steps=hp['num_steps'])
      if name == 'bim':
        attack = ta.BIM(module, **settings)
      elif name == 'pgd':
        settings['random_start'] = True
        attack = ta.PGD(module, **settings)
        settings['note'] = "the random start comes from torch's generator, not our key"
      else:
        settings['decay'] = hp['decay']
        attack = ta.MIFGSM(module, **settings)
        settings['note'] = ('torchattacks divides the gradient by its mean |.|, ours by its '
                            'sum: the same sign steps')
    elif name == 'carlini_wagner_l2':
      # torchattacks' CW runs one constant; give it our total Adam step budget.
      steps = hp['binary_search_steps'] * hp['max_iterations']
      settings = dict(c=hp['initial_const'], kappa=hp['confidence'], lr=hp['learning_rate'],
                      steps=steps, note=(
                          f'no binary search: one constant c = our initial_const, and steps '
                          f'= our binary_search_steps x max_iterations = {steps} Adam steps; '
                          'both stop early when the loss stalls (torchattacks: loss rose '
                          'since the last check, every steps // 10; ours: improved by < '
                          '0.01 %, every max_iterations // 10)'))
      attack = ta.CW(module, **{k: v for k, v in settings.items() if k != 'note'})
    elif name == 'deepfool':
      settings = dict(steps=hp['max_iter'], overshoot=hp['overshoot'],
                      note=('torchattacks loops over the images one at a time and builds each '
                            'Jacobian with one backward pass per class (ours: one batched vjp '
                            f'of num_classes={hp["num_classes"]} cotangents per step)'))
      attack = ta.DeepFool(module, steps=hp['max_iter'], overshoot=hp['overshoot'])
    else:
      raise KeyError(name)
    return lambda: attack(self._x, self._target), settings

  def prepare(self, name: str, settings: dict[str, Any]
              ) -> tuple[Callable[[Any], None], Callable[[int], dict[str, Any]]]:
    """The peer of workload ``name``.

    Args:
      name: the workload.
      settings: the JAX job's settings; the method's registry defaults (an attack's keyword
        defaults) fill the rest.

    Returns:
      ``(keep, compare)``: call ``keep(output)`` with the JAX workload's output, then
      ``compare(repeats)`` for the record's entries (just ``torch_tool: None`` where the
      workload has no peer): one untimed warm-up call that also counts the model calls,
      then ``repeats`` timed calls.
    """
    if name not in PEERS:
      return lambda output: None, lambda repeats: {'torch_tool': None}
    library = self.versions['torchattacks' if name in attacks.ATTACKS else 'captum']
    tool = PEERS[name] if name == 'forward' else PEERS[name].replace(' ', f' {library} ', 1)
    if name in saliency.REGISTRY:
      defaults = dict(saliency.REGISTRY[name].defaults)
    else:
      defaults = _defaults(attacks.ATTACKS[name]) if name in attacks.ATTACKS else {}
    hp = {**defaults, **settings}
    build = self._attack_peer if name in attacks.ATTACKS else self._captum_peer
    peer, peer_settings = build(name, hp)
    kept = {}

    def keep(output):
      kept['output'] = np.asarray(output)

    def compare(repeats: int) -> dict[str, Any]:
      calls, warmup = warm_up(self.module, peer)
      timing, output = time_calls(peer, repeats)
      record = {'torch_tool': f'{tool} (torch {self.versions["torch"]})',
                'torch_settings': peer_settings, 'torch_model_calls_per_call': calls,
                **{f'torch_{k}': v for k, v in timing.items()}, 'torch_warmup_s': warmup,
                'torch_items_per_s': self._x.shape[0] / timing['median_s'],
                'loadavg_1min': os.getloadavg()[0]}
      if 'output' in kept:
        record['torch_agreement'] = self._agreement(name, kept['output'], output)
      return record

    return keep, compare

  def _agreement(self, name: str, ours: np.ndarray, theirs: Any) -> dict[str, float]:
    theirs = theirs.detach().numpy()
    if theirs.ndim == 4:
      theirs = theirs.transpose(0, 2, 3, 1)
    out = {}
    if name in _ELEMENTWISE:
      # Two things move results apart, and rel_l2_diff shows how much: a pre-activation
      # within float rounding of zero opens a ReLU gate in one framework only, and exact ties
      # in a 2x2 max pool (saturated image regions) share the gradient in ours
      # (models.max_pool_2x2) but send it to one input in torch's MaxPool2d.
      out['max_abs_diff'] = float(np.max(np.abs(ours - theirs)))
      out['max_abs_jax'] = float(np.max(np.abs(ours)))
      out['rel_l2_diff'] = float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(ours),
                                                                      1e-30))
    if name in attacks.ATTACKS:
      for tag, adv in (('jax', ours), ('torch', theirs)):
        with self._torch.no_grad():
          pred = self.module(self._torch.from_numpy(
              np.ascontiguousarray(adv.transpose(0, 3, 1, 2)))).argmax(1).numpy()
        out[f'{tag}_fooled_rate'] = float(np.mean(pred != self._target_np))
        out[f'{tag}_mean_l2'] = float(np.mean(np.sqrt(np.sum(
            np.square(adv - self._x_np), axis=(1, 2, 3)))))
    return out

