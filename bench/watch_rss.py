"""Run a command and report its wall time and the peak RSS of it and of every Ray process on the machine
(``RssMonitor``, sampled every 0.5 s): how the README's real-size data build is measured, as a user runs it.

    python bench/watch_rss.py --json /tmp/build-rss.json -- vlm-sweep data build --source FILE --images DIR --out OUT

Run it with nothing else using Ray on the machine: every process whose command line names ray is counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from data_build import RssMonitor  # noqa: E402


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    mon = RssMonitor(watch=proc.pid)
    mon.start()
    rc = proc.wait()
    mon.stop_flag.set()
    mon.join()
    result = {"command": command, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
              "peak_rss_command_mb": round(mon.peak_driver / 2**20),
              "peak_rss_command_and_all_ray_processes_mb": round(mon.peak_total / 2**20)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
