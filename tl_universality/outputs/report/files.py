"""File names inside a results folder, shared by the writers (demo, CLI) and the report."""

CORRELATION_DIR = "correlation"
NEURON_TABLE = "neuron_table.parquet"
FAMILIES = "families.parquet"
EXPLANATIONS = "explanations.parquet"
PREDICTION = "prediction_neurons.parquet"
ENTROPY_SCORES = "entropy_scores.parquet"
ENTROPY_INTERVENTION = "entropy_intervention"  # EntropyInterventionResult.save folder
ATTENTION_SCORES = "attention_deactivation.parquet"
PATH_ABLATION = "path_ablation"  # PathAblationResult.save folder
SUMMARY = "summary.json"
#: Written by the report when it has the model: each page neuron's contexts and vocabulary.
NEURON_DATA = "neuron_data.json"
