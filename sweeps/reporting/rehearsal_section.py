"""The sweep report's section on a rehearsal (``vlm-sweep rehearse``), from the ``rehearsal.json`` it wrote beside
the sweep: the cluster's view of the submitted sweep (planned) kept apart from this machine's run of it (observed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .markdown import markdown_table

REHEARSAL_FILE = "rehearsal.json"


def _table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(pd.DataFrame(rows)) if rows else "(none)"


def _s(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:g}"


def section(experiment: Path, level: str = "##") -> list[str]:
    """Markdown lines for the report (none when the experiment is not a rehearsal's)."""
    path = experiment / REHEARSAL_FILE
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    cluster, planned, here = r["cluster"], r["planned"], r["this_machine"]
    sub = r["submitted"]
    lines = [f"{level} Rehearsal on a simulated copy of `{Path(cluster['config']).name}`", "",
             f"The submitted sweep (`--preset {sub['preset']} --backend {sub['backend']} --grid {sub['grid']} "
             f"--stage {sub['stage']}`) on Ray's autoscaler with the cluster's node types: "
             f"{'; '.join(cluster['node_types'])}. Every trial asked Ray for what it asks the real cluster; the "
             f"GPUs were simulated ({here['models']} models trained on the CPU).", "",
             f"{level}# Planned: the cluster's view", ""]
    for stage, s in planned["stages"].items():
        nodes = ", ".join(f"{n} × {t}" for t, n in s["nodes"].items()) or "none"
        lines += [f"Stage {stage}: {len(s['trials'])} trials, {s['at_once']} at once on the cluster, on {nodes} "
                  f"node(s).", ""]
    if planned.get("evaluation"):
        e = planned["evaluation"]
        lines += [f"Evaluation tasks ask {e['request']}: {e['per_node']} at once per {e['node_type']} node.", ""]
    lines += [f"{level}# Refused before anything started", ""]
    lines += ([f"- `{b['what']}` (profile {b['profile']}): {b['why']}" for b in r["infeasible"]] or
              ["Nothing: some node type can hold every request."]) + [""]
    seen = r.get("observed")
    if seen is None:
        return lines
    lines += [f"{level}# Observed: this machine's run of it", "",
              f"Capped to fit this machine: {here['max_concurrent_trials']} trials in flight, "
              f"{here['object_store_mb_per_node']} MB object store per node, idle timeout {here['idle_timeout_s']} s "
              f"(the config's {cluster['idle_timeout_minutes']} min); {here['autoscaler']}.", "",
              f"Launched: {', '.join(f'{n} × {t}' for t, n in seen['launched'].items()) or 'nothing'}; peak "
              f"{seen['peak_worker_nodes']} worker node(s), {seen['peak_gpus']:g} GPUs up, "
              f"{seen['peak_gpus_in_use']:g} in use; the sweep took {seen['sweep_s']} s; "
              + (f"the idle worker nodes were removed {seen['scale_down_s']} s after it."
                 if seen["scale_down_s"] is not None else "some worker nodes were still up when the rehearsal "
                                                          "stopped waiting."), "",
              *([f"Still asked of the autoscaler when the sweep ended, and cleared: {seen['standing_requests']} "
                 f"(a Train controller that ends without cancelling leaves its request for up to 200 s, and a node "
                 f"up with it).", ""] if seen.get("standing_requests") else []),
              _table([{"node": n["node_id"][-6:], "type": n["type"], "up (s)": _s(n["up_s"]),
                       "down (s)": _s(n["down_s"])}
                      for n in seen["nodes"]]), "",
              "Each trial's wait: from its Tune trial's start to its first Train worker's start (the placement group "
              "waiting for a node, plus Train's worker start-up).", "",
              _table([{"stage": t["stage"], "trial": t["trial"], "node type": t["node_type"],
                       "wait (s)": _s(t["wait_s"])} for t in seen["trials"]]), ""]
    if seen["errors"]:
        lines += ["Errors:", ""] + [f"- {e}" for e in seen["errors"]] + [""]
    return lines
