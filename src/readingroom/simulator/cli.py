"""``readingroom simulate``: compare collaboration models on a workload, with a progress bar and a report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from readingroom.cli_support import console, err, fail


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to the top-level command group."""

    @app.command()
    def simulate(
        workload: Path = typer.Argument(..., exists=True, dir_okay=False, help="Workload YAML (see docs/simulator.md)"),
        policy: list[str] = typer.Option(
            ["B0", "B1", "B2", "B3", "B4"], "--policy", "-p",
            help="B0, B0-fifo, B1 (B1:q=0.15), B2, B3, B4, or a routing-rules file (path.yaml or name=path.yaml)"),
        days: int = typer.Option(7, "--days", min=1, help="Measured days (one warm-up day runs before them)"),
        seed: int = typer.Option(1, "--seed", help="Same seed, same results"),
        replications: int | None = typer.Option(None, "--replications", "-r", min=1,
                                                help="Default: the workload's `replications`"),
        load_scale: float = typer.Option(1.0, "--load-scale", min=0.05, help="Multiply every site's volume"),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes (results do not depend on it)"),
        out: Path = typer.Option(Path("simulation"), "--out", help="Directory for the report, plots and event logs"),
        event_log: bool = typer.Option(True, "--event-log/--no-event-log",
                                       help="Write replication 1 of each policy as a ReadingRoom event log"),
    ) -> None:
        """Run the workload under each policy on common random numbers and write a comparison report.

        The rule-based policies go through ReadingRoom's own router; the report (report.html) holds the
        comparison table with 95% intervals over the replications, the plots and the cross-policy figures.
        """
        from readingroom.simulator import metrics, report
        from readingroom.simulator.arrivals import draw
        from readingroom.simulator.eventlog import write_event_log
        from readingroom.simulator.policies import make_policy
        from readingroom.simulator.runner import run_all
        from readingroom.simulator.workload import WorkloadError, load_workload

        try:
            spec = load_workload(workload)
            for p in policy:
                make_policy(p)
        except (WorkloadError, ValueError) as exc:
            raise fail(str(exc)) from exc
        reps = replications or spec.replications
        out.mkdir(parents=True, exist_ok=True)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err) as bar:
            task = bar.add_task(f"simulating {days} days x {reps} replications", total=len(policy) * reps)
            runs = run_all(workload, policy, replications=reps, seed=seed, days=days, load_scale=load_scale,
                           jobs=jobs, progress=lambda _spec: bar.advance(task))
        comparison = metrics.compare(runs, readers_by_utc_hour=metrics.readers_on_shift(spec))
        if event_log:
            sim_start = draw(spec, seed, 0, 1).sim_start
            for name, per_rep in runs.items():
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
                write_event_log(per_rep[0], spec, sim_start, out / f"eventlog-{safe}.sqlite")
        meta = {"workload": str(workload), "seed": seed, "days": days, "replications": reps,
                "load_scale": load_scale, "policies": ", ".join(runs)}
        html = report.write_report(comparison, runs, out, title=f"ReadingRoom simulation: {spec.name}", meta=meta)
        _print_summary(comparison, list(runs))
        console.print(f"report: {html}")


def _print_summary(comparison: object, policies: list[str]) -> None:
    """The headline rows of the comparison on the terminal (the report has everything)."""
    table = Table(title="Turnaround (minutes, mean over replications)")
    table.add_column("metric")
    for name in policies:
        table.add_column(name, justify="right")
    rows = comparison.table()  # type: ignore[attr-defined]
    wanted = ("tat.p50", "tat.p90", "tat.p90.P1", "tat.p90.P2", "tat.p90.P3", "tat.p90.P4", "breach_rate",
              "violations", "utilisation.cv")
    for metric, per_policy in rows:
        if metric in wanted:
            table.add_row(metric, *[_fmt(per_policy.get(name)) for name in policies])
    console.print(table)


def _fmt(cell: object) -> str:
    if not cell:
        return ""
    mean = cell[0] if isinstance(cell, tuple | list) else cell
    return "" if mean is None else f"{float(mean):.1f}"  # type: ignore[arg-type]
