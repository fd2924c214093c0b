"""The console's progress bars: on a terminal a stage keeps a bar with counts and time left below its event lines,
which are written through it (not over it); on a pipe, the event lines only.

    pytest -q tests/test_console.py
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap

SCRIPT = textwrap.dedent("""
    import time
    from vlm_core.base.logs import ProgressBar, configure_logging, event, set_verbose
    configure_logging()
    set_verbose(False)
    bar = ProgressBar(3, "stage 1", "trials")
    for i in range(3):
        time.sleep(0.3)
        event("stage 1 · s1-trial-%d finished", i)
        bar.step(note=f"best so far {3 - i}.0")
    bar.close()
    event("stage 1 · done")
""")


def _run_on_a_terminal() -> str:
    """The script's whole output as a terminal shows it (stdout and stderr on one pseudo-terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_bar_below_the_event_lines():
    out = _run_on_a_terminal()
    frames = out.replace("\r\n", "\n").split("\r")  # the bar redraws itself in place
    assert any("stage 1:" in f and "2/3 trials" in f and "left]" in f and "best so far 2.0" in f for f in frames)
    lines = [line.strip() for line in out.replace("\r", "\n").splitlines()]
    said = [line for line in lines if "· s1-trial-" in line]
    # each event line whole on a line of its own (the bar cleared first, redrawn after)
    assert [line.split(" ", 1)[1] for line in said] == [f"stage 1 · s1-trial-{i} finished" for i in range(3)]


def test_a_pipe_gets_the_event_lines_only():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "\r" not in proc.stdout
    assert [line.split(" ", 1)[1] for line in proc.stdout.splitlines()] == [
        "stage 1 · s1-trial-0 finished", "stage 1 · s1-trial-1 finished", "stage 1 · s1-trial-2 finished",
        "stage 1 · done"]
