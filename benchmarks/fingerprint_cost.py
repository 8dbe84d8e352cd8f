"""What the checkpoint fingerprints cost: hashing every model's weights and every token batch,
against the whole correlate run they protect, on the same models and tokens (one run).

Usage::

    python benchmarks/fingerprint_cost.py                  # demo-shaped models, 3 seeds
    python benchmarks/fingerprint_cost.py --shape gpt2-small --tokens 16384
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

SHAPES = {
    "demo": dict(n_layers=2, d_model=128, d_mlp=512, n_heads=4, d_head=32, d_vocab=4096, n_ctx=128),
    "gpt2-small": dict(
        n_layers=12, d_model=768, d_mlp=3072, n_heads=12, d_head=64, d_vocab=50257, n_ctx=512
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="demo")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tl_universality.analyses.correlation import correlate
    from tl_universality.analyses.correlation.fingerprint import batch_digest, weights_digest

    shape = SHAPES[args.shape]
    models = [
        HookedTransformer(HookedTransformerConfig(act_fn="gelu_new", seed=s, **shape))
        for s in range(args.models)
    ]
    seq = shape["n_ctx"]
    toks = torch.randint(1, shape["d_vocab"], (args.tokens // seq, seq))
    toks[:, 0] = 0

    t = time.perf_counter()
    for m in models:
        weights_digest(m)
    t_weights = time.perf_counter() - t
    t = time.perf_counter()
    for batch in toks.split(args.batch_size):
        batch_digest(batch)
    t_tokens = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        correlate(
            models[0], models[1:], toks, bos_token_id=0, n_draws=1, progress=False,
            batch_size=args.batch_size, checkpoint_dir=folder,
        )  # fmt: skip
        t_run = time.perf_counter() - t
    params = sum(p.numel() for p in models[0].parameters())
    print(f"{args.shape}: {args.models} models of {params:,} parameters, {toks.numel():,} tokens")
    print(f"  correlate with checkpoints (hashing included): {t_run:8.2f} s")
    print(f"  hashing the weights of every model:            {t_weights:8.3f} s")
    print(f"  hashing every token batch:                     {t_tokens:8.3f} s")
    print(f"  share of the run: {(t_weights + t_tokens) / t_run:.2%}")


if __name__ == "__main__":
    main()
