"""Tasks: the data, main loss, evaluation and headline metrics of each experiment, behind one
interface (``base.Task``).

One package per task holds its ``task.py`` (its ``Task``) and its own helpers (FineWeb's data
preparation, shards and tokenizer; the arithmetic problems; the separation metrics); its section of a
run config is ``replication.config.<task>``. ``registry`` maps each task's config section to its class.
"""
