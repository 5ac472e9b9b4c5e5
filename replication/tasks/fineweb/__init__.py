"""FineWeb pretraining (experiment 1): data preparation, token shards, the tokenizer and the task."""
