"""Search, not only enumerate: a sweep stage's trials drawn by Ray Tune's search algorithms over typed spaces.

* ``space`` — search spaces as data (``--space FILE.yaml``): distributions over trial fields by their dotted names,
  checked against the typed configs before Ray starts;
* ``algorithms`` — ``--search grid|random|optuna``: how a stage's rows and its space become one Tune experiment
  (its ``param_space``, searcher, sample count and ``search.json``).

The driver (``sweeps.driver``) runs what they lay out; ``sweeps.trial_config.trial_from_config`` turns a searched
trial's Tune config back into its typed trial; ``sweeps.reporting.search_section`` reports what a search found.
"""
