"""Universality across training: when do universal neurons appear (docs/training_curve.md)?

For each training checkpoint of a set of seed models, :func:`universality_over_training`
correlates seed 0 with the other seeds on the same tokens with
:func:`~tl_universality.analyses.correlation.correlate` (and its baseline), and records per layer
the universal share, the excess-correlation quantiles, the baseline median and the participation
ratio of seed 0's activations, with the reference's loss on those tokens. The models come from an
offline seed family trained with checkpoints
(``train_seed_family(..., checkpoints=[...])``) or, with the internet, from TransformerLens
models with checkpoints such as the Stanford GPT-2 seeds (``stanford-gpt2-small-a`` ... ``-e``,
609 checkpoints each), loaded with ``checkpoint_index`` or ``checkpoint_value``.

The :class:`TrainingCurve` also keeps every unit's max-correlation and baseline at every
checkpoint, so a neuron can be followed through training: :meth:`TrainingCurve.first_exceeds`
says when each neuron's best match across seeds first exceeds a threshold.

Participation ratio of a layer: ``(Σ λ)² / Σ λ²`` over the eigenvalues ``λ`` of the covariance of
its units (over the same token positions as the correlation), i.e. ``tr(C)² / ‖C‖²_F``: the number
of directions the activations effectively use (1 for a rank-one layer, ``d`` for isotropic ones).
"""

from tl_universality.analyses.training_curve.curve import (
    participation_ratios,
    training_curve,
    universality_over_training,
)
from tl_universality.analyses.training_curve.result import (
    COLUMNS,
    TOKENS_PER_STEP,
    Loader,
    TrainingCurve,
)

__all__ = [
    "COLUMNS",
    "Loader",
    "TOKENS_PER_STEP",
    "TrainingCurve",
    "participation_ratios",
    "training_curve",
    "universality_over_training",
]
