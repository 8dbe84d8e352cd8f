"""Stage 4, analyses of universal neurons: correlation, the neuron table, families, roles, entropy
and attention neurons, SAE latents."""
