"""What tasks and the loop share: precision, distributed processes, progress, the command lines'
short errors, and the run record (``record``: a run's id, folder, metrics, checkpoints and summary)."""
