"""Shared builders of the LayerNorm-removal tests: tiny models, tokens and a fast schedule."""

from __future__ import annotations

import torch

from tl_universality.ln_removal import RemovalSchedule

#: Every event one step apart from step 2: 2 layers -> ln2 2,3; Q/K 4,5; V 6,7; ln_final 8;
#: end-of-text 9; BOS 10.
FAST = RemovalSchedule(start=2, gap_ln2=1, gap_qk=1, gap_v=1, gap_ln_final=1, gap_eot=1)
EOT = 1  # the end-of-text id of the test token streams


def tokens(n: int = 48, seq: int = 16, seed: int = 0, d_vocab: int = 64) -> torch.Tensor:
    """``[n, seq]`` random ids, BOS (0) first, an end-of-text (1) now and then."""
    gen = torch.Generator().manual_seed(seed)
    toks = torch.randint(2, d_vocab, (n, seq), generator=gen)
    toks[torch.rand(n, seq, generator=gen) < 0.05] = EOT
    toks[:, 0] = 0
    return toks
