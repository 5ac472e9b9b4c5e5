"""Tasks: the data, main loss, evaluation and headline metrics of each experiment, behind one
interface (``base.Task``).

One package per task holds everything that serves only it: ``config.py`` (its section of a run
config, a ``TaskConfig`` whose ``name`` is fixed), ``task.py`` (its ``Task``) and its own helpers
(FineWeb's data preparation, shards and tokenizer; the arithmetic problems; the separation metrics).
``replication.config.run`` knows every task's config and ``registry`` every task's class.
"""
