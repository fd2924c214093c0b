"""What a trial's ``status`` metric says (the last report of every trial carries one).

    python -c "from sweeps.statuses import STATUS_NON_FINITE; print(STATUS_NON_FINITE)"
"""

STATUS_RUNNING = "running"
"""Sent with every epoch's report."""
STATUS_NON_FINITE = "non_finite_loss"
"""The trial stopped on a NaN/inf loss (its ``message`` metric says at which step); it is not retried and counts
as finished, with ``val_loss`` inf."""
