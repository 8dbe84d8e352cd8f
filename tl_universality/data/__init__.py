"""Stage 1, data: token streams, the embedded corpus and tokenizer, token sets and the seed
family."""
