"""How every vlm-sweep process logs: INFO (or ``$VLM_SWEEP_LOG``) to stderr, one format, chatty libraries quieter.
The command line sets it up in the driver; a Tune trial that trains in itself sets it up in its own process (Ray
forwards the trial's stderr to the driver's console, as it does for Train's workers).

    VLM_SWEEP_LOG=DEBUG vlm-sweep sweep ...
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("httpx", "urllib3", "filelock", "transformers.modeling_utils")


def configure_logging() -> None:
    """Log at ``$VLM_SWEEP_LOG`` (default INFO) to stderr, unless this process already has a handler."""
    logging.basicConfig(level=os.environ.get("VLM_SWEEP_LOG", "INFO"), format=FORMAT, datefmt="%H:%M:%S")
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
