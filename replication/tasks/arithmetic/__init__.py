"""Out-of-distribution multiplication (experiment 2): the problems, their splits and the task."""
