"""`veeksha-upload`: rebuild W&B runs from Veeksha output directories (spec: wandb.md).

    veeksha-upload PATH... [--recursive] [--project P] [--entity E] [--group G] [--tag T ...]
        [--notes N] [--run-name R] [--mode online|offline] [--no-artifacts] [--force] [--dry-run]
        [--jobs N] [--json] [--fallback-offline] [--api-key KEY] [--base-url URL]

Exit status: 0 when every directory was uploaded or skipped, 1 when any failed (the others still
upload) or W&B is unreachable, 2 for usage errors.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import click
from veeksha.shared.errors import UsageError, VeekshaError
from veeksha.uploader import groups
from veeksha.uploader.discovery import Target, discover
from veeksha.uploader.probe import netrc_api_key, probe
from veeksha.uploader.reader import read_config
from veeksha.uploader.report import Reporter
from veeksha.uploader.settings import Layer, config_layer, env_layer, resolve
from veeksha.uploader.worker import Task, run_tasks

PROG = "veeksha-upload"
HELP = """Upload Veeksha output directories to Weights & Biases.

PATH is a run directory, a sweep or capacity-search directory, or (with --recursive) any tree
holding them. Settings, highest first: these flags > WANDB_* environment > the directory's config.yml
`wandb:` section > defaults. So the mode is --mode > WANDB_MODE > config.yml wandb.mode > online: a
directory whose config says `mode: offline` (the quick-start demo's) stays offline unless --mode
online is given. Directories that are still running or already uploaded (and unchanged) are skipped.
"""


def _config_of(target: Target) -> dict:
    if target.kind == groups.RUN:
        return read_config(target.path / "config.yml")
    return groups.container_config(target.path)


def plan_task(target: Target, env: Layer, flags: Layer, *, force: bool, dry_run: bool) -> Task:
    try:
        config = _config_of(target)
        cfg_layer = config_layer(groups.wandb_section(config), str(target.path / "config.yml"))
    except VeekshaError as e:
        return Task(target, None, force, dry_run, error=str(e))
    settings = resolve(cfg_layer, env, flags)
    if settings.mode == "online" and not settings.api_key:
        settings = replace(settings, api_key=netrc_api_key(settings.base_url))
    return Task(target, settings, force, dry_run)


def check_online(tasks: list[Task], fallback: bool, reporter: Reporter) -> list[Task]:
    """Probe each online destination once; unreachable → fail fast or fall back to offline."""
    verdicts: dict[tuple[str, str | None], str | None] = {}
    out: list[Task] = []
    for task in tasks:
        s = task.settings
        if s is None or s.mode != "online":
            out.append(task)
            continue
        key = (s.base_url, s.api_key)
        if key not in verdicts:
            result = probe(s.base_url, s.api_key)
            verdicts[key] = None if result.ok else result.message
            if not result.ok:
                action = "writing offline runs instead" if fallback else "nothing uploaded online"
                hint = "" if fallback else " (use --mode offline or --fallback-offline)"
                click.echo(f"{PROG}: {result.message}; {action}{hint}", err=True)
        problem = verdicts[key]
        if problem is None:
            out.append(task)
        elif fallback:
            out.append(replace(task, settings=s.with_mode("offline")))
        else:
            out.append(replace(task, error=f"not uploaded: {problem}"))
    return out


def _secrets(*layers: Layer, tasks: list[Task]) -> tuple[str, ...]:
    keys = {layer.api_key for layer in layers} | {t.settings.api_key for t in tasks if t.settings}
    return tuple(sorted(k for k in keys if k))


@click.command(PROG, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1)
@click.option("--recursive", "-r", is_flag=True, help="find run/sweep/capsearch directories in a tree")
@click.option("--project", help="W&B project (default: config, WANDB_PROJECT, else 'veeksha')")
@click.option("--entity", help="W&B entity (team or user)")
@click.option("--group", help="W&B group (sweeps and capacity searches default to their directory name)")
@click.option("--tag", "tags", multiple=True, help="W&B tag (repeatable; replaces config/env tags)")
@click.option("--notes", help="W&B run notes")
@click.option("--run-name", help="W&B run name (default: the run directory name)")
@click.option(
    "--mode",
    type=click.Choice(["online", "offline"]),
    help="beats WANDB_MODE and config.yml wandb.mode; online when none is set",
)
@click.option("--no-artifacts", is_flag=True, help="do not log the output files as an artifact")
@click.option("--force", is_flag=True, help="upload again even when already uploaded and unchanged")
@click.option("--dry-run", is_flag=True, help="say what would be uploaded; change nothing")
@click.option(
    "--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="worker processes"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document instead of lines")
@click.option("--fallback-offline", is_flag=True, help="write offline runs when W&B is unreachable")
@click.option("--api-key", help="W&B API key (prefer WANDB_API_KEY: flags show up in `ps`)")
@click.option("--base-url", help="W&B server (default: WANDB_BASE_URL, else https://api.wandb.ai)")
def command(
    paths: tuple[str, ...],
    recursive: bool,
    project: str | None,
    entity: str | None,
    group: str | None,
    tags: tuple[str, ...],
    notes: str | None,
    run_name: str | None,
    mode: str | None,
    no_artifacts: bool,
    force: bool,
    dry_run: bool,
    jobs: int,
    as_json: bool,
    fallback_offline: bool,
    api_key: str | None,
    base_url: str | None,
) -> int:
    flags = Layer(
        project=project,
        entity=entity,
        group=group,
        tags=tags or None,
        notes=notes,
        run_name=run_name,
        mode=mode,
        log_artifacts=False if no_artifacts else None,
        base_url=base_url,
        api_key=api_key,
    )
    env = env_layer()
    targets = discover(list(paths), recursive)
    reporter = Reporter(as_json)
    tasks = [plan_task(t, env, flags, force=force, dry_run=dry_run) for t in targets]
    secrets = _secrets(env, flags, tasks=tasks)
    tasks = [replace(t, secrets=secrets) for t in tasks]
    if not dry_run:
        tasks = check_online(tasks, fallback_offline, reporter)
        blocked = [t for t in tasks if t.error and t.error.startswith("not uploaded:")]
        if blocked and len(blocked) == len(tasks) and not as_json:
            return 1  # W&B unreachable for everything: the one line above says so
    run_tasks(tasks, jobs, reporter.add)
    return reporter.finish()


def main(argv: list[str] | None = None) -> None:
    try:
        code = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        code = e.exit_code
    except click.UsageError as e:
        click.echo(f"{PROG}: {e.format_message()} (see --help)", err=True)
        code = 2
    except click.Abort:
        click.echo(f"{PROG}: interrupted", err=True)
        code = 130
    except UsageError as e:
        click.echo(f"{PROG}: {e}", err=True)
        code = e.exit_code
    except VeekshaError as e:
        click.echo(f"{PROG}: {e}", err=True)
        code = e.exit_code
    sys.exit(code if isinstance(code, int) else 0)
