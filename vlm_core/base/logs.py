"""How every vlm-sweep process logs, and what a user's console shows.

The console is calm by default: one line per event of the study (a step started or finished, a trial started,
finished with its best val loss, stopped by ASHA, failed with its log), said through the :data:`EVENTS` logger on
stdout, plus every warning and error. Everything else — our own INFO lines, Ray's, Tune's, Ray Data's — goes to
``OUT/logs/vlm-sweep.log`` (:func:`log_to`), and Ray keeps its workers' and trials' output in its session folder
(``OUT/logs/ray-session`` points there). ``--verbose`` (:func:`set_verbose`) brings it all back to the console: our
INFO lines, Ray's and Ray Data's progress, the trials' own output and W&B's banners, as before.

On an interactive console (a terminal on stderr) each sweep stage and the data build also keep a progress bar
(:class:`ProgressBar`: counts, rate and time left) below the event lines; a pipe, a file, CI and ``--verbose`` get
the event lines only.

A Tune trial that trains in itself logs through :func:`configure_logging` in its own process; Ray forwards that
process's output to the driver's console only with ``--verbose``.

    VLM_SWEEP_LOG=DEBUG vlm-sweep sweep ...        # the log level (default INFO) of the file and of --verbose
    vlm-sweep run --preset local --verbose          # the whole output on the console too
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EVENT_FORMAT = "%(asctime)s %(message)s"
FILE_DATEFMT = "%Y-%m-%d %H:%M:%S"
QUIET = ("httpx", "urllib3", "filelock", "transformers.modeling_utils")
EVENTS = "vlm_sweep.events"
"""The logger of the console's event lines (``logging.getLogger(EVENTS).info(...)``)."""
VERBOSE_ENV = "VLM_SWEEP_VERBOSE"
"""Set to 1 by ``--verbose``; read by :func:`is_verbose` (so Ray's set-up in this process follows it)."""
LOG_FILE = "vlm-sweep.log"
_TAG = "_vlm_sweep_handler"
_folder: Path | None = None
_pending: Path | None = None


def is_verbose() -> bool:
    """Verbose unless a long command said otherwise (``start_console``): other commands keep the whole output."""
    return os.environ.get(VERBOSE_ENV, "1") != "0"


OWN = ("vlm_core", "data_pipeline", "sweeps", "vlm_sweep", "__main__", "root")
"""Loggers whose warnings the calm console shows; a library's warnings go to the log file (its errors show)."""


class _ConsoleFilter(logging.Filter):
    """Calm console: our warnings and everyone's errors; everything with ``--verbose``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_verbose() or record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and record.name.split(".")[0] in OWN


def _own(logger: logging.Logger, kind: str) -> list[logging.Handler]:
    return [h for h in logger.handlers if getattr(h, _TAG, None) == kind]


def _add(logger: logging.Logger, kind: str, handler: logging.Handler) -> None:
    for old in _own(logger, kind):
        logger.removeHandler(old)
        old.close()
    setattr(handler, _TAG, kind)
    logger.addHandler(handler)


class _EventLine(logging.StreamHandler):
    """The event lines' handler: written through ``tqdm.write``, so that a progress bar on the console is cleared
    and redrawn below the line instead of being broken by it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


class ProgressBar:
    """A bar with counts, rate and time left (tqdm, on stderr) while a stage runs, shown only on an interactive
    console without ``--verbose``; otherwise it does nothing (the event lines carry the counts and time left)."""

    def __init__(self, total: int, desc: str, unit: str):
        self.bar = None
        if total > 0 and sys.stderr.isatty() and not is_verbose():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=sys.stderr, leave=False,
                            dynamic_ncols=True, bar_format="{desc}: {bar} {n_fmt}/{total_fmt}{unit} "
                            "[{elapsed} elapsed, ~{remaining} left]{postfix}")

    def step(self, n: int = 1, note: str | None = None) -> None:
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def configure_logging() -> None:
    """Log at ``$VLM_SWEEP_LOG`` (default INFO): records to stderr (warnings only unless verbose), event lines to
    stdout; chatty libraries quieter. Nothing is added where something else already handles the root logger (a
    test runner, a notebook, an application embedding us): its handlers get every record, event lines included.
    Idempotent: this module's own handlers are replaced."""
    root = logging.getLogger()
    if any(getattr(h, _TAG, None) is None for h in root.handlers):
        return
    root.setLevel(os.environ.get("VLM_SWEEP_LOG", "INFO"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    console.addFilter(_ConsoleFilter())
    _add(root, "console", console)
    events = logging.getLogger(EVENTS)
    events.setLevel(logging.INFO)
    events.propagate = False  # its own console handler; the file gets it through log_to
    line = _EventLine(sys.stdout)
    line.setFormatter(logging.Formatter(EVENT_FORMAT, datefmt="%H:%M:%S"))
    _add(events, "console", line)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_verbose(verbose: bool) -> None:
    """``--verbose``: the whole output on the console (this process, the Ray it starts, its trials, W&B)."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter prints nothing at verbose=0
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()  # its records reach the root logger: the log file, not the console
        hf_logging.enable_propagation()
        hf_logging.disable_progress_bar()
    calm_ray_console()


def log_to(folder: Path) -> logging.Handler:
    """Write every record of this process (ours at the root level, Ray's, Tune's, Ray Data's, the event lines)
    to ``folder/vlm-sweep.log`` too, appending; returns the file's handler."""
    global _folder
    folder.mkdir(parents=True, exist_ok=True)
    _folder = folder
    handler = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT, datefmt=FILE_DATEFMT))
    for name in ("", EVENTS, "ray"):
        _add(logging.getLogger(name), "file", handler)
    return handler


def log_folder() -> Path | None:
    """The folder :func:`log_to` writes to in this process (``init_ray`` links its Ray session there)."""
    return _folder


def start_console(out: str | Path, verbose: bool) -> Path:
    """What a long command (``run``, ``sweep``, ``data build``) does first: ``--verbose`` or not, and its log file
    ``OUT/logs/vlm-sweep.log`` (returned). The file opens only once the command's checks of ``OUT`` have passed
    (:func:`open_log`: nothing is written to a folder a command refuses); records before that wait in memory."""
    global _pending
    set_verbose(verbose)
    buffer = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)  # until open_log
    for name in ("", EVENTS, "ray"):
        _add(logging.getLogger(name), "file", buffer)
    _pending = Path(out) / "logs"
    path = _pending / LOG_FILE
    event("log: %s%s", path, "" if verbose else " (Ray's, Tune's and Ray Data's output too; --verbose shows it here)")
    return path


def open_log() -> Path | None:
    """Open the log file :func:`start_console` named (the records so far first); returns it, or None when no command
    asked for one. Called where a command starts its work (``init_ray``, the main job after its checks)."""
    global _pending
    if _pending is None:
        return _folder / LOG_FILE if _folder else None
    folder, _pending = _pending, None
    waiting = [r for h in _own(logging.getLogger(), "file") if isinstance(h, logging.handlers.MemoryHandler)
               for r in h.buffer]
    handler = log_to(folder)
    for record in waiting:
        handler.handle(record)
    return folder / LOG_FILE


def calm_ray_console() -> None:
    """Ray's own loggers print to the console through their own handlers (``ray``, ``ray.data``): at INFO with
    ``--verbose``, errors only otherwise (the log file has the rest)."""
    level = logging.INFO if is_verbose() else logging.ERROR
    for name in ("ray", "ray.data", "ray.tune", "ray.train"):
        for h in logging.getLogger(name).handlers:
            if getattr(h, _TAG, None) == "file":  # ray.init re-formats every handler of "ray": ours back
                h.setFormatter(logging.Formatter(FORMAT, datefmt=FILE_DATEFMT))
            elif isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(level)


def event(message: str, *args) -> None:
    """One line on the console (and in the log file): an event of the study."""
    logging.getLogger(EVENTS).info(message, *args)
