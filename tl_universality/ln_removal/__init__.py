"""LayerNorm removal by fine-tuning: fake LayerNorms, their schedule, export to LN-free models.

The data path: :mod:`.fake_ln` (LayerNorms that divide by a fixed σ, with hook points of their own)
→ :mod:`.sigma` (σ as a moving average of the live std) → :mod:`.schedule` (when each path goes
fake) → :mod:`.finetune` (:func:`remove_layernorm`, settings in :mod:`.config`, checkpoints in
:mod:`.checkpoint`) → :mod:`.export` (σ folded into the weights: a ``normalization_type=None``
model) → :mod:`.result`. :mod:`.published` loads the published LN-free GPT-2 checkpoints;
:mod:`.dla` checks that direct logit attribution is exact on an LN-free model.
"""

from tl_universality.ln_removal.config import LNRemovalConfig
from tl_universality.ln_removal.dla import DirectLogitAttribution, direct_logit_attribution
from tl_universality.ln_removal.export import export_layernorm, export_ln_free
from tl_universality.ln_removal.fake_ln import (
    FakeLayerNorm,
    fake_layernorms,
    fake_paths,
    install_fake_layernorms,
)
from tl_universality.ln_removal.finetune import LNRemovalProgress, remove_layernorm, std_aux_loss
from tl_universality.ln_removal.published import (
    PUBLISHED_LN_FREE,
    from_hf_ln_free,
    load_published_ln_free,
)
from tl_universality.ln_removal.result import LNRemovalResult
from tl_universality.ln_removal.schedule import RemovalEvent, RemovalSchedule

__all__ = [
    "PUBLISHED_LN_FREE",
    "DirectLogitAttribution",
    "FakeLayerNorm",
    "LNRemovalConfig",
    "LNRemovalProgress",
    "LNRemovalResult",
    "RemovalEvent",
    "RemovalSchedule",
    "direct_logit_attribution",
    "export_layernorm",
    "export_ln_free",
    "fake_layernorms",
    "fake_paths",
    "from_hf_ln_free",
    "install_fake_layernorms",
    "load_published_ln_free",
    "remove_layernorm",
    "std_aux_loss",
]
