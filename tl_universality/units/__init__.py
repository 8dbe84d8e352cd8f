"""Stage 2, units: which activations are units (neurons, hooks, SAE latents), streaming them, and
interventions as hooks."""
