"""How requests reach the tasks: the v1 routes (and, beside them, other protocols), body parsing."""
