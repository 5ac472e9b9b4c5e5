"""The training loop (``train``) and its components: objectives, monitoring, alignment, optimizers,
checkpoint state, stop requests, the summary and the toolchain checks; ``configure`` writes a run's
config."""
