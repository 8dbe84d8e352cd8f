"""Stage 5, outputs: plots, the HTML report and wandb logging, all consuming the result protocol."""
