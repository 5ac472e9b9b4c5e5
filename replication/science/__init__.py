"""The science, with no knowledge of runs: matrix-based entropy (``mbe``), GAPT's phase controller
and its rule sets (``gapt``), and the method registry (``methods``)."""
