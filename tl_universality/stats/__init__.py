"""Stage 3, statistics: model-free streaming moments, cross moments, baselines and variance
reduction. Imports nothing above core."""
