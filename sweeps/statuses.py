"""What every trial reports: the metric the sweep ranks trials by, and what the ``status`` metric of a trial's
last report says. Tune's search, ASHA, Train's checkpoint choice, the lineage and the reports all read these.
"""

METRIC, MODE = "val_loss", "min"
"""The one place they are set: validation loss on the common held-out set, lower is better."""
STATUS_RUNNING = "running"
"""Sent with every epoch's report."""
STATUS_NON_FINITE = "non_finite_loss"
"""The trial stopped on a NaN/inf loss (its ``message`` metric says at which step); it is not retried and counts
as finished, with ``val_loss`` inf."""
