"""Everything a run config and an experiment file can say, validated with pydantic: the sections
(``base``), each task's section, a whole run (``run``) and an experiment's reporting (``report``)."""
