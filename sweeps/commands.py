"""``sweeps``' own commands: ``run`` (the whole study), ``sweep`` (its flags are ``SweepConfig``'s fields) and
``report``. ``sweeps.cli`` mounts them beside ``vlm_core``'s and ``data_pipeline``'s.

    vlm-sweep run --preset local
    vlm-sweep sweep --data data --images corpus/images --preset local --grid paper19 --stage all
    vlm-sweep report runs/sweep
    vlm-sweep show grid paper19                  # the grid's trials, both stages
    vlm-sweep show profiles                      # each hardware profile's Ray request on each backend
"""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import ArgumentError

from vlm_core.base.errors import ConfigError
from vlm_core.base.logs import event, start_console

from .argv import parse_dataclass
from .cluster.rehearsal import RehearsalConfig, rehearse
from .cluster.simulated import SimulationLimits
from .driver import SweepConfig, run_sweep
from .matrix import format_table, get_grid
from .profiles import profile_table
from .reporting.sweep_report import write_report
from .study import StudyConfig, run_main_job


def run_cmd(config: StudyConfig) -> dict:
    """The whole study on the embedded default: corpus → data build → stage-1 and stage-2 sweeps → eval → report."""
    start_console(config.out, config.verbose)
    return run_main_job(config)


def sweep_cmd(config: SweepConfig) -> dict:
    """Run the ablation study on Ray Tune: stage 1, lineage, stage 2 under ASHA (see sweeps/driver.py)."""
    if not config.dry_run:
        start_console(config.out, config.verbose)
    result = run_sweep(config)
    if config.dry_run or config.verbose:  # the plan, or everything
        print(json.dumps(result, indent=2, default=str))
    else:  # a line; every trial's summary is in OUT/trials.json
        report = result["report"]
        event("sweep: done, %d trials, %d stopped by ASHA, %d failed. Report: %s (as a page: %s); every trial: %s",
              report["trials"], len(report["stopped_by_asha"]), len(report["errors"]), report["report"],
              report["html"], Path(config.out).resolve() / "trials.json")
    return result


def parse_sweep_command(argv: list[str]) -> SweepConfig:
    """The ``SweepConfig`` of a ``vlm-sweep sweep ...`` command line (a leading ``vlm-sweep`` is dropped), its flags
    read as the CLI reads them; anything else is refused by name."""
    argv = argv[1:] if argv[:1] == ["vlm-sweep"] else list(argv)
    if argv[:1] != ["sweep"]:
        raise ConfigError(f"the command to rehearse must be a `vlm-sweep sweep ...` command (after --), got "
                          f"{' '.join(argv) or 'nothing'!r}")
    try:
        return parse_dataclass(SweepConfig, argv[1:])
    except ArgumentError as e:
        raise ConfigError(f"the sweep command to rehearse: {e}") from e


def rehearse_cmd(cluster: str = "cluster.yaml", out: str = "runs/rehearsal", max_concurrent: int = 2,
                 max_worker_nodes: int | None = None, idle_timeout_s: float = 30.0, object_store_mb: int = 200,
                 n_images: int = 40, verbose: bool = False, command: list[str] | None = None) -> dict:
    """Rehearse a sweep on a simulated copy of the cluster (Ray's autoscaler, fake GPU nodes) before paying for it.

    Everything after ``--`` is the sweep command as it would be submitted; the rehearsal runs it at the tiny scale
    with every request as on the cluster and writes OUT/rehearsal.json and a section of the sweep's report
    (sweeps/cluster/rehearsal.py).

    Args:
        cluster: The cluster's autoscaler config (its node types, limits and idle timeout are copied).
        out: The rehearsal's folder.
        max_concurrent: Trials in flight at once on this machine (the cluster's own view is reported apart).
        max_worker_nodes: Cap on the simulated worker nodes (default: the config's max_workers).
        idle_timeout_s: Seconds an idle simulated worker node lives (the config's idle_timeout_minutes, scaled down).
        object_store_mb: Object store of each simulated node (MB).
        n_images: Images of the sample corpus the rehearsal's data are drawn from.
        verbose: Ray's, Tune's and Ray Data's own output on the console too.
        command: The sweep command (what follows ``--``; a leading ``vlm-sweep`` is allowed).
    """
    submitted = parse_sweep_command(command or [])
    rcfg = RehearsalConfig(cluster=cluster, out=out, max_concurrent=max_concurrent, n_images=n_images,
                           limits=SimulationLimits(object_store_mb=object_store_mb, idle_timeout_s=idle_timeout_s,
                                                   max_workers=max_worker_nodes))
    start_console(out, verbose)
    record = rehearse(submitted, rcfg)
    seen = record["observed"]
    event("rehearsal: done in %s s; launched %s; peak %d worker node(s), %g GPUs in use; scale-down %s. Report: %s",
          seen["sweep_s"], ", ".join(f"{n} × {t}" for t, n in seen["launched"].items()) or "nothing",
          seen["peak_worker_nodes"], seen["peak_gpus_in_use"],
          f"{seen['scale_down_s']} s after the sweep" if seen["scale_down_s"] is not None else "not seen",
          Path(out).resolve() / "sweep" / "report.md")
    return record


def report_cmd(experiment: str, select_by: str = "val_loss") -> dict:
    """Write report.md, trials.csv and loss / by-axis plots for a sweep's experiment folder (its --out).

    Args:
        experiment: The sweep's --out.
        select_by: What names each stage's best config: ``val_loss`` or a benchmark metric the sweep evaluated
            (e.g. ``pope.f1``).
    """
    result = write_report(experiment, select_by=select_by)
    print(json.dumps(result, indent=2))
    return result


def show_grid_cmd(name: str = "paper19") -> str:
    """Print a grid's trials: stage 1, then stage 2 with the stage-1 config each continues.

    Args:
        name: The grid (paper19, lora, full).
    """
    text = "\n\n".join(f"stage {stage}:\n{format_table(get_grid(name, stage))}" for stage in (1, 2))
    print(text)
    return text


def show_profiles_cmd() -> str:
    """Print each hardware profile's Ray resource request on each backend (or why the backend refuses it)."""
    text = "\n".join(profile_table())
    print(text)
    return text


COMMANDS = {"run": run_cmd, "sweep": sweep_cmd, "report": report_cmd, "rehearse": rehearse_cmd}
TAKES_A_COMMAND = {"rehearse"}
"""Commands that take another command after ``--`` (as their ``command`` argument)."""
GROUPS = {"show": ("What a name stands for: presets, prompts, token lengths, grids, hardware profiles",
                   {"grid": show_grid_cmd, "profiles": show_profiles_cmd})}
CONFIG_CLASSES = {"sweep": SweepConfig, "run": StudyConfig}
"""Commands whose flags are one dataclass's fields (at top level), by command path."""
POSITIONAL = {"report": ("experiment",), "show grid": ("name",)}
