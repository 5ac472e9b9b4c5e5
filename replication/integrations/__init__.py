"""GAPT in your own training loop (``dropin``) and in the Hugging Face Trainer (``hf``)."""
