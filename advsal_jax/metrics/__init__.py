"""Similarity, localisation and statistics for comparing saliency maps.

JAX metrics take pairs of maps batched over a leading axis (``[B,H,W]`` or ``[B,H,W,C]``),
work under ``jax.jit`` and return ``f32[B]`` (``ssim`` returns the local SSIM map, ``hog`` the
feature vectors, ``top_k_mask`` a mask); each matches the scipy/skimage reference named in its
docstring. ``mann_whitney_u`` and ``bootstrap_ci`` run on the host with scipy, as do the
detection metrics ``auroc`` and ``tpr_at_fpr`` (scores of a detector, ties counted the
standard way).
"""

from advsal_jax.metrics._correlation import cosine
from advsal_jax.metrics._correlation import l2_distance
from advsal_jax.metrics._correlation import pearson
from advsal_jax.metrics._correlation import spearman
from advsal_jax.metrics._detection import auroc
from advsal_jax.metrics._detection import tpr_at_fpr
from advsal_jax.metrics._hog import hog
from advsal_jax.metrics._hog import hog_pearson
from advsal_jax.metrics._hog import hog_spearman
from advsal_jax.metrics._localization import avg_diff
from advsal_jax.metrics._localization import hamming_likeness
from advsal_jax.metrics._localization import jaccard
from advsal_jax.metrics._localization import sim_ratio
from advsal_jax.metrics._localization import top_k_mask
from advsal_jax.metrics._norms import l0_norm
from advsal_jax.metrics._norms import l2_norm
from advsal_jax.metrics._norms import linf_norm
from advsal_jax.metrics._ssim import mean_ssim
from advsal_jax.metrics._ssim import ssim
from advsal_jax.metrics._stats import MannWhitneyResult
from advsal_jax.metrics._stats import MeanCI
from advsal_jax.metrics._stats import bootstrap_ci
from advsal_jax.metrics._stats import mann_whitney_u

__all__ = [
    'MannWhitneyResult',
    'MeanCI',
    'auroc',
    'avg_diff',
    'bootstrap_ci',
    'cosine',
    'hamming_likeness',
    'hog',
    'hog_pearson',
    'hog_spearman',
    'jaccard',
    'l0_norm',
    'l2_distance',
    'l2_norm',
    'linf_norm',
    'mann_whitney_u',
    'mean_ssim',
    'pearson',
    'sim_ratio',
    'spearman',
    'ssim',
    'top_k_mask',
    'tpr_at_fpr',
]
