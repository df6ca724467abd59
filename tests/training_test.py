"""Tests of advsal_jax.training: a train step lowers the loss; optimizer config errors."""

import jax
import numpy as np
import pytest

from advsal_jax import models
from advsal_jax import training


@pytest.mark.parametrize('name,optimizer,lr', [('cnn_mnist', 'adam', 1e-3),
                                               ('alexnet_cifar', 'sgd', 0.01)])
def test_train_steps_lower_the_loss_on_a_fixed_batch(name, optimizer, lr):
  cfg = training.TrainConfig(model=name, dataset=models.get_spec(name).dataset, epochs=1,
                             optimizer=optimizer, learning_rate=lr, schedule='constant',
                             augment=False)
  tx = training.make_optimizer(cfg, steps_per_epoch=10)
  state = training.init_state(cfg, tx)
  model = models.create(name)
  x = jax.random.uniform(jax.random.key(0), (16, *models.get_spec(name).input_shape))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
  step = jax.jit(lambda s, x, y: training.train_step(model, tx, cfg, s, x, y))
  losses = []
  for _ in range(5):
    state, m = step(state, x, y)
    losses.append(float(m['loss']))
  assert losses[-1] < losses[0] - 0.1, losses
  assert int(state['step']) == 5
  if 'batch_stats' in state['variables']:  # BatchNorm statistics were updated in train mode.
    init_stats = training.init_state(cfg, tx)['variables']['batch_stats']
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), init_stats,
                         state['variables']['batch_stats'])
    assert max(jax.tree.leaves(moved)) > 0


def test_bad_optimizer_and_schedule():
  cfg = training.TrainConfig(model='cnn_mnist', dataset='mnist', optimizer='lbfgs')
  with pytest.raises(ValueError, match='optimizer'):
    training.make_optimizer(cfg, 10)
  cfg = training.TrainConfig(model='cnn_mnist', dataset='mnist', schedule='linear')
  with pytest.raises(ValueError, match='schedule'):
    training.make_optimizer(cfg, 10)
