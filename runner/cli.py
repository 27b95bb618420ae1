"""`veeksha-run`: the command line of the load runner.

    veeksha-run --config FILE [--section.key VALUE ...] [--strict]
    veeksha-run capacity-search --config FILE [--section.key VALUE ...] [--dry-run]
    veeksha-run evaluate RUN_DIR|SWEEP_DIR [--strict] [--other-host-gone]
    veeksha-run simulate-server [--port N] [--section.key VALUE ...]

Every VeekshaError is mapped to one line and an exit code here, at the boundary.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click
from veeksha.runner.open_files import raise_open_file_limit
from veeksha.runner.progress import prepare_console
from veeksha.shared.config_loader import EnvFallbacks, empty_override
from veeksha.shared.errors import OutputError, UsageError, VeekshaError
from veeksha.shared.jsonio import is_utf8
from veeksha.shared.redact import may_hold_secret, redact_argv
from veeksha.shared.secret import Secret
from veeksha.shared.starting import INTERRUPTED_EXIT, stop_like_ctrl_c

if TYPE_CHECKING:  # imported where used: `veeksha-run --help` stays fast
    from veeksha.runner.lost_records import Recovery
    from veeksha.shared.config import BenchmarkConfig
    from veeksha.shared.paths import RunPaths


def parse_overrides(
    args: list[str], not_a_key: Callable[[str], str | None] = lambda name: None
) -> list[tuple[str, str]]:
    """`--a.b VALUE` / `--a.b=VALUE` pairs → [("a.b", "VALUE")]. A name without a dot sets a whole
    section (`--traffic_scheduler '{type: concurrent}'`); the validator rejects unknown keys.
    `not_a_key(name)` is the error for a name that is no option nor config key, or None."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UsageError(_unexpected(arg, out[-1][0] if out else None))
        name, eq, value = arg[2:].partition("=")
        if not eq:
            value = _value_after(args, i, name, not_a_key)
            i += 1
        out.append((name, _given(name, value)))
        i += 1
    return out


def _value_after(args: list[str], i: int, name: str, not_a_key: Callable[[str], str | None]) -> str:
    """The value of `--name` at args[i], which is the next argument. A mistyped switch (`--dryrun`)
    has none, or takes the next option for one: said as what it is, not as a missing value."""
    following = args[i + 1] if i + 1 < len(args) else None
    if following is None or following.startswith("--"):
        problem = not_a_key(name)
        if problem:
            raise UsageError(problem)
    if following is None:
        raise UsageError(f"--{name} needs a value, e.g. --{name} VALUE")
    return following


def _given(name: str, value: str) -> str:
    """An empty value is refused, not taken as null: `--x "$UNSET"` or `--x=` would otherwise clear
    what the file sets (a concurrency cap, the model) without a word."""
    if value == "":
        raise UsageError(empty_override(f"--{name}"))
    return value


def _empty(flag: str) -> str:
    return f"{flag} is empty; give a value or leave the flag out"


def _path_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """A path option's value, refused when it cannot be what the user meant: empty (an unset shell
    variable; Path("") is the current directory) or an option (`--export-json-schema --config c.yml`
    wrote the schema to a file named `--config`)."""
    if value is None:
        return None
    flag = param.opts[0]
    if value == "":
        raise click.UsageError(_empty(flag))
    if value.startswith("--"):
        raise click.UsageError(
            f"{flag} needs a value, got the option {value}; give a path (a file whose name starts "
            f"with -- is ./{value})"
        )
    return Path(value)


def _not_a_key(ctx: click.Context, name: str) -> str | None:
    """The error for `--name` when it is neither an option of this command nor a config key; None
    when it is a config key. Names another command that has the option (`capacity-search --strict`)."""
    from veeksha.shared.config import BenchmarkConfig, CapacitySearchConfig, SimulatedServerConfig
    from veeksha.shared.config_loader import is_config_key

    configs = {capacity_search_command: CapacitySearchConfig, simulate_server_command: SimulatedServerConfig}
    config = configs.get(ctx.command, BenchmarkConfig)
    if is_config_key(config, name):
        return None
    flag, prog = f"--{name}", ctx.command_path
    see = f"see {prog} --help"
    commands = {"veeksha-run": run_command, **{f"veeksha-run {n}": c for n, c in COMMANDS.items()}}
    others = [other for other, command in commands.items() if flag in _options(command)]
    if others:
        return f"{flag} is an option of {' and '.join(others)}, not of {prog}, nor a config key; {see}"
    close = difflib.get_close_matches(flag, _options(ctx.command), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{flag} is not a known option or config key{hint}; {see}"


def _options(command: click.Command) -> list[str]:
    """The options `command` shows in its --help."""
    params = [p for p in command.get_params(click.Context(command)) if isinstance(p, click.Option)]
    return [opt for p in params if not p.hidden for opt in p.opts if opt.startswith("--")]


def _unexpected(arg: str, after: str | None) -> str:
    """The error for a stray argument: usually the second word of an unquoted value, which is not
    echoed when that value may be a secret (`--client.headers.Authorization Bearer sk-...`)."""
    if after is None:
        return f"unexpected argument {arg!r}; overrides look like --section.key VALUE"
    shown = "" if may_hold_secret(after) else f" {arg!r}"
    quote = f"a value with spaces needs quotes: --{after} 'A B'"
    return f"unexpected argument{shown} after --{after}'s value; {quote}"


def env_fallbacks(env: Mapping[str, str] = os.environ) -> EnvFallbacks:
    """The documented environment fallbacks for unset client keys (config.md). The one place the
    runner reads them: below the command line, a config is what the file and the flags say."""
    key = env.get("OPENAI_API_KEY")
    return EnvFallbacks(api_base=env.get("OPENAI_API_BASE") or None, api_key=Secret(key) if key else None)


def _guard(fn: Callable[[], int]) -> None:
    from veeksha.runner.progress import hang_up  # (imported now, not in the handler)

    def hung_up(signum: int, frame: object) -> None:
        """SIGHUP (ssh dropped, terminal closed): a stop, once; the console may be gone from now on."""
        if hang_up():
            raise KeyboardInterrupt

    # SIGTERM (a job scheduler, `kill`) and SIGHUP (a hangup: by default it killed the process, and
    # run.json stayed `running`) end a run as Ctrl-C does, also outside its recording (which handles
    # them itself): the directory gets its final status, a sweep its manifest.
    stop_like_ctrl_c(on_hangup=hung_up)
    try:
        code = fn()
    except VeekshaError as e:
        click.echo(f"veeksha-run: {e}", err=True)
        code = e.exit_code
    except OSError as e:  # disk full, a directory that went away: one line, not a traceback
        from veeksha.runner.benchmark import write_failure

        click.echo(f"veeksha-run: {write_failure(e)}", err=True)
        code = OutputError.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a run's own handling (set-up, evaluation)
        click.echo("\nveeksha-run: interrupted", err=True)
        code = INTERRUPTED_EXIT
    sys.exit(code)


RUN_HELP = """Run one benchmark (or a sweep when the config has !expand).

Any config key can be overridden: --client.api_base URL,
--traffic_scheduler.interval_generator.arrival_rate 5, --server.type simulated, ...

\b
Other commands (each has --help):
  veeksha-run capacity-search --config FILE   largest rate/concurrency meeting the SLOs
  veeksha-run evaluate RUN_DIR                recompute every metric from the raw records
                                              (a sweep directory: finish its runs, manifest, table)
  veeksha-run compare DIR DIR... --output_dir OUT   runs side by side: table, CDFs, time series
  veeksha-run simulate-server [--port N]      the built-in simulated server
"""


@click.command(
    "veeksha-run",
    help=RUN_HELP,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("--config", "config_path", type=click.Path(), callback=_path_value, help="*.veeksha.yml file")
@click.option(
    "--benchmark-config-from-file", "seed_config", type=click.Path(), callback=_path_value, hidden=True
)
@click.option("--strict", is_flag=True, help="exit 1 when an SLO or a health check fails")
@click.option("--dry-run", is_flag=True, help="validate the config, print the runs it expands to")
@click.option(
    "--export-json-schema",
    "schema_out",
    type=click.Path(),
    callback=_path_value,
    help="write the config JSON schema to FILE and exit (takes no other option)",
)
@click.pass_context
def run_command(
    ctx: click.Context,
    config_path: Path | None,
    seed_config: Path | None,
    strict: bool,
    dry_run: bool,
    schema_out: Path | None,
) -> None:
    def go() -> int:
        from veeksha.runner.sweep import run_from_config

        if schema_out is not None:
            given = {
                "--config": config_path,
                "--benchmark-config-from-file": seed_config,
                "--strict": strict,
                "--dry-run": dry_run,
            }
            _refuse_alongside_schema([*(flag for flag, value in given.items() if value), *ctx.args[:1]])
            return export_schema(schema_out)
        overrides = parse_overrides(list(ctx.args), functools.partial(_not_a_key, ctx))
        return run_from_config(
            config_path or seed_config, overrides, strict=strict, dry_run=dry_run, fallbacks=env_fallbacks()
        )

    _guard(go)


def _refuse_alongside_schema(others: list[str]) -> None:
    """The schema is the same for every config: an option given with it would be ignored unseen."""
    if others:
        raise UsageError(
            f"--export-json-schema takes no other option (got {others[0]}): it writes the schema every "
            "config follows and exits; run it on its own"
        )


def _check_schema_file(out: Path) -> None:
    """Refused before writing: the write goes through a temporary file renamed over `out`, which
    fails on a directory with a puzzling errno and would replace a device such as /dev/null."""
    if out.is_dir():
        raise UsageError(
            f"--export-json-schema: {out} is a directory; give a file name, e.g. {out / 'schema.json'}"
        )
    if out.exists() and not out.is_file():
        raise UsageError(f"--export-json-schema: {out} is not a regular file; give a file name")
    if not out.parent.is_dir():
        raise UsageError(f"--export-json-schema: {out.parent} does not exist; create it or write elsewhere")


def export_schema(out: Path) -> int:
    from veeksha.shared.config import BenchmarkConfig
    from veeksha.shared.jsonio import write_json
    from veeksha.shared.schema import json_schema

    _check_schema_file(out)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **json_schema(BenchmarkConfig)}
    write_json(out, schema)
    click.echo(f"veeksha-run: wrote the config JSON schema to {out}")
    return 0


@click.command(
    "capacity-search",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("--config", "config_path", type=click.Path(), callback=_path_value, required=True)
@click.option("--dry-run", is_flag=True, help="validate the config, print the search plan; run nothing")
@click.pass_context
def capacity_search_command(ctx: click.Context, config_path: Path, dry_run: bool) -> None:
    """Find the largest rate / concurrency that meets every SLO."""

    def go() -> int:
        from veeksha.runner.capacity_search import run_capacity_search

        overrides = parse_overrides(list(ctx.args), functools.partial(_not_a_key, ctx))
        return run_capacity_search(config_path, overrides, env_fallbacks(), dry_run=dry_run)

    _guard(go)


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="exit 1 when an SLO or a health check fails")
@click.option(
    "--other-host-gone",
    is_flag=True,
    help="the unfinished run (or sweep) was written on another host, and its process there has ended",
)
def evaluate_command(run_dir: Path, strict: bool, other_host_gone: bool) -> None:
    """Recompute every metric, SLO and health check of RUN_DIR from its raw records.

    RUN_DIR may be a sweep or capacity-search directory: its runs that did not finish are evaluated,
    and its manifest and table (or results) rebuilt (one whose process died is marked crashed)."""

    def go() -> int:
        from veeksha.runner.capacity_results import is_search_root, refresh_capacity_search
        from veeksha.runner.sweep import is_sweep_root, refresh_sweep_summary

        if is_sweep_root(run_dir):
            return _evaluate_sweep(run_dir, strict, other_host_gone)
        if is_search_root(run_dir):
            return _evaluate_search(run_dir, strict, other_host_gone)
        code = _evaluate_run(run_dir, strict, other_host_gone)
        _say(refresh_sweep_summary(run_dir, other_host_gone))  # its sweep's table holds its numbers
        _say(refresh_capacity_search(run_dir, other_host_gone))  # its search's results judge it
        return code

    _guard(go)


def _say(note: str | None) -> None:
    if note:
        click.echo(f"veeksha-run: {note}")


def _evaluate_sweep(root: Path, strict: bool, other_host_gone: bool) -> int:
    """A sweep directory: its members that did not finish, then the sweep itself (refresh_sweep)."""
    from veeksha.runner.sweep import check_sweep_ended, members_to_finish, refresh_sweep
    from veeksha.shared.paths import SWEEP_MANIFEST

    check_sweep_ended(root, other_host_gone)  # its process would still be writing them
    codes = [_evaluate_run(member, strict, other_host_gone) for member in members_to_finish(root)]
    note = refresh_sweep(root, other_host_gone)
    _say(note or _nothing_to_finish(codes, f"sweep {root}", _status_in(root / SWEEP_MANIFEST), "run"))
    return max(codes, default=0)


def _evaluate_search(root: Path, strict: bool, other_host_gone: bool) -> int:
    """A capacity-search directory: its attempts that did not finish, then its results (a search
    whose process died is marked crashed: killed before its first attempt had a directory, it has
    nothing else to evaluate)."""
    from veeksha.runner.capacity_results import attempts_to_finish, check_search_ended, refresh_search
    from veeksha.shared.paths import CAPSEARCH_RESULTS

    check_search_ended(root, other_host_gone)  # its process would still be writing them
    codes = [_evaluate_run(attempt, strict, other_host_gone) for attempt in attempts_to_finish(root)]
    note = refresh_search(root)
    status = _status_in(root / CAPSEARCH_RESULTS)
    _say(note or _nothing_to_finish(codes, f"capacity search {root}", status, "attempt"))
    return max(codes, default=0)


def _nothing_to_finish(codes: list[int], what: str, status: str, member: str) -> str | None:
    """The one line for a sweep or search that had nothing left to finish (without it `evaluate`
    printed nothing at all); None when a member was evaluated (its summary was printed)."""
    return None if codes else f"{what} is {status}: no {member} left to finish"


def _status_in(path: Path) -> str:
    """The `status` a sweep's manifest or a search's results hold (just rewritten by evaluate)."""
    from veeksha.shared.jsonio import read_json

    info = read_json(path)
    return str(info.get("status") or "ended") if isinstance(info, dict) else "ended"


def _evaluate_run(run_dir: Path, strict: bool, other_host_gone: bool) -> int:
    from veeksha.runner.evaluation.evaluate import evaluate_run
    from veeksha.runner.evaluation.report import format_summary
    from veeksha.runner.lost_records import evaluation_lock, mark_finished, mark_unfinished
    from veeksha.shared.config_loader import load_written_config
    from veeksha.shared.paths import RunPaths
    from veeksha.shared.records import RUN_CRASHED, RUN_FAILED

    paths = RunPaths(run_dir)
    _check_run_dir(run_dir, paths)
    cfg = load_written_config(paths.config_yml)  # a config it cannot read stops it before anything changes
    with evaluation_lock(paths):  # a second `evaluate` at once would add every lost record again
        if not paths.request_records.exists():  # stopped before its request log was opened: no request
            paths.request_records.parent.mkdir(parents=True, exist_ok=True)
            paths.request_records.touch()
        recovery = _recover(paths, cfg, other_host_gone)
        why = f"being evaluated by `veeksha-run evaluate`; if that stopped, rerun it on {run_dir}"
        finished_at = recovery.finished_at or mark_unfinished(paths, why)
        try:
            ev = evaluate_run(run_dir, rebuilt=True)
        except OSError as e:  # (disk full): the line names the file, or at least this run
            from veeksha.runner.benchmark import write_failure

            raise write_failure(e, run_dir) from e
        if finished_at is not None:  # complete now: an uploader may take it
            mark_finished(paths, finished_at)
    click.echo(format_summary(ev))
    if ev.run_status == RUN_CRASHED:  # its process died mid-run: no complete measurement (exit 1)
        if not recovery.crashed:  # (marked so just now: said above)
            click.echo(f"veeksha-run: the run crashed (its process died before it ended): {run_dir}")
        return 1
    if ev.all_failed is not None or ev.run_status == RUN_FAILED:  # as the run itself exited
        return 1
    return 1 if strict and not (ev.all_slos_met is not False and ev.all_health_passed) else 0


def _rescue_counter(cfg: BenchmarkConfig) -> Callable[[str], int] | None:
    """A rescued reply without the server's usage is counted as the run would have: with its
    tokenizer, or (one that cannot be loaded here, on another machine) the built-in approximation."""
    from veeksha.runner.sessions.tokenizer import token_counter

    try:
        return token_counter(cfg.client.tokenizer)[0]
    except Exception:  # any failure to load it: recovery must not fail for a count
        click.echo("veeksha-run: cannot load the run's tokenizer here; rescued replies are counted roughly")
        return None


def _recover(paths: RunPaths, cfg: BenchmarkConfig, other_host_gone: bool) -> Recovery:
    """lost_records.recover, said in one line: what a crash (or a full disk) left without a record."""
    from veeksha.runner.lost_records import recover

    count_tokens = _rescue_counter(cfg) if paths.driver_rescues() else None
    recovery = recover(paths, other_host_gone, count_tokens)
    rescued = f"{recovery.rescued} record(s) its drivers kept were written; " if recovery.rescued else ""
    if recovery.crashed:
        click.echo(
            f"veeksha-run: {paths.root} was left running by a process that died: marked crashed; {rescued}"
            f"{recovery.lost} dispatched request(s) without a record were recorded as driver_lost"
        )
    elif recovery.lost:
        click.echo(
            f"veeksha-run: {recovery.lost} dispatched request(s) of {paths.root} had no record "
            "(the run ended before writing them) and were recorded as driver_lost"
        )
    return recovery


def _check_run_dir(run_dir: Path, paths: RunPaths) -> None:
    """What `evaluate` needs before it changes anything: a run's files, and its config.yml (a run
    writes it first, right after making the directory)."""
    if not paths.run_json.is_file() and not paths.request_records.exists():
        raise UsageError(
            f"{run_dir} is not a run directory (no run.json or metrics/request_level_metrics.jsonl); "
            "pass the directory a run created"
        )
    if not paths.config_yml.is_file():
        raise UsageError(
            f"{run_dir} has no config.yml: not a veeksha run directory (or it was cut short before "
            "its config was written, and holds nothing to evaluate); pass the directory a run created"
        )


@click.command(
    "simulate-server",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.pass_context
def simulate_server_command(ctx: click.Context, port: int, host: str) -> None:
    """Run the built-in simulated OpenAI-compatible server (overrides: --max_batch_size 32,
    --precise.ttft 0.05 ...: any server.* key of a config, without `server.`)."""

    def go() -> int:
        from veeksha.runner.server_launcher import check_server_port, client_host, local_api_base, url_host
        from veeksha.runner.simserver.server import serve
        from veeksha.shared.config import SimulatedServerConfig
        from veeksha.shared.config_loader import apply_override, parse_override_value
        from veeksha.shared.schema import build

        # The main command's flags, under `server.`: `--precise.ttft 0.1` as `--server.precise.ttft 0.1`
        # (a dash spelling, `--max-batch-size`, is taken too, as it always was here).
        def not_a_key(name: str) -> str | None:
            return _not_a_key(ctx, name.replace("-", "_"))

        raw: dict[str, object] = {"type": "simulated", "host": host, "port": port}
        for name, value in parse_overrides(list(ctx.args), not_a_key):
            apply_override(raw, name.replace("-", "_"), parse_override_value(value))
        cfg = build(SimulatedServerConfig, raw, "server")
        check_server_port(cfg, host_key="--host", port_key="--port")  # one line, not a bind traceback

        def announce(bound: str, port: int) -> None:
            # The URL a client here reaches it at; where it listens too, when that is every interface.
            where = "" if client_host(bound) == bound else f" (listening on {url_host(bound)}:{port})"
            click.echo(f"simulated server on {local_api_base(bound, port)}{where}")

        serve(cfg, announce=announce)
        return 0

    _guard(go)


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output_dir", "--output-dir", "output_dir", type=click.Path(), callback=_path_value, required=True
)
def compare_command(run_dirs: tuple[Path, ...], output_dir: Path) -> None:
    """Compare two or more runs (a sweep directory stands for its runs) without W&B: a summary table
    with each run's change against the first (console and compare_summary.csv), overlaid CDFs and the
    time series, written to OUTPUT_DIR."""

    def go() -> int:
        from veeksha.runner.compare import compare

        click.echo(compare(list(run_dirs), output_dir))
        click.echo(f"veeksha-run: comparison written to {output_dir}")
        return 0

    _guard(go)


COMMANDS = {
    "capacity-search": capacity_search_command,
    "evaluate": evaluate_command,
    "compare": compare_command,
    "simulate-server": simulate_server_command,
}


def refuse_non_utf8(args: list[str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (`caf\\xe9.yml` as 'caf\\udce9.yml'),
    which no UTF-8 file holds: run.json, which records the command line, could not be written, and the
    run failed after its server had started and its directory was made. So refused at once, also
    before a --dry-run; an argument that may be a secret is named by its position only."""
    shown = redact_argv(args)
    for i, arg in enumerate(args):
        if is_utf8(arg):
            continue
        why = "is not valid UTF-8 (veeksha-run records its command line as UTF-8 text)"
        if shown[i] != arg:
            raise UsageError(
                f"argument {i + 1} (not shown: it may be a secret) {why}; give the value in UTF-8"
            )
        raise UsageError(
            f"argument {_escaped(arg)} {why}; rename the file or directory to a UTF-8 name (or choose one) "
            "and pass that"
        )


def _escaped(arg: str) -> str:
    """`arg` quoted, each byte that is not UTF-8 written \\xNN, as the shell's $'...' writes it."""
    try:
        raw = os.fsencode(arg)
    except UnicodeEncodeError:  # a surrogate that stands for no byte (given in-process): as Python writes it
        return ascii(arg)
    return "'" + raw.decode("utf-8", "backslashreplace") + "'"


def main(argv: list[str] | None = None) -> None:
    # First: the drivers and servers this process starts inherit its open-file limit, and each
    # connection is a file (a concurrency run above ~1000 sessions ran out at a soft limit of 1024).
    raise_open_file_limit()
    # Before anything is opened or printed: the run needs no console (a stdout closed or whose reader
    # exits early, `veeksha-run ... | head -1`, ends what is shown, never the run or the dry run).
    prepare_console()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        refuse_non_utf8(args)
    except UsageError as e:
        click.echo(f"veeksha-run: {e}", err=True)
        sys.exit(e.exit_code)
    command, prog = run_command, "veeksha-run"
    if args and args[0] in COMMANDS:
        command, prog, args = COMMANDS[args[0]], f"veeksha-run {args[0]}", args[1:]
    try:
        command.main(args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        sys.exit(e.exit_code)
    except click.UsageError as e:  # click's own form is four lines; ours is one
        click.echo(f"veeksha-run: {e.format_message()} (see {prog} --help)", err=True)
        sys.exit(UsageError.exit_code)
    except click.Abort:
        click.echo("veeksha-run: interrupted", err=True)
        sys.exit(INTERRUPTED_EXIT)


def seed_main() -> None:
    """`python -m veeksha.benchmark --benchmark-config-from-file FILE`: the seed doc's spelling."""
    main()
