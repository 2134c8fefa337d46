"""The ``skerry`` command line.

``skerry up`` runs the platform. The other commands talk to a running platform's REST
API (``skerry.workload.client``): ``datasets``, ``workflows``, ``run``, ``status``,
``cancel``. They find it at ``--url`` or ``$SKERRY_URL`` (default
http://127.0.0.1:8000) and authenticate with the hub token in ``$SKERRY_TOKEN`` or in
``--token-file``; there is no ``--token``: every user on the machine can read a
process's arguments.

Exit status: 0 done; 1 a waited-for run ended failed or cancelled; 2 bad input, a
refusal by the platform or a platform that cannot be reached (a sentence on stderr);
130 interrupted while waiting (the run goes on).
"""

import argparse
import json
import sys

from . import __version__, config
from .accounts import AccountPolicy
from .errors import SkerryError
from .workload.loglinks import log_href
from .workload.states import FINAL, run_outcome

POLL_S = 0.5
BAR_WIDTH = 30
FAILED_SHOWN = 20  # failed jobs listed under a run; the rest are counted


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skerry", description="Jupyter-centric data infrastructure.")
    p.add_argument("--version", action="version", version=f"skerry {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="run the whole platform on this machine, in the foreground")
    up.add_argument("--data-dir", default="./skerry-data", help="where state lives (default ./skerry-data)")
    up.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    up.add_argument("--ssl-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM), with --ssl-key")
    up.add_argument("--ssl-key", metavar="FILE", help="the certificate's private key (PEM)")
    up.add_argument("--account-template", default=AccountPolicy.template, metavar="TEMPLATE",
                    help="the OS account of each hub user, with {username} (default %(default)s)")
    up.add_argument("--proxy", choices=config.PROXIES, default=None,
                    help="the proxy: haproxy, traefik, or chp (configurable-http-proxy); default "
                         "$SKERRY_PROXY, else haproxy where installed, else traefik")
    up.add_argument("--dev", action="store_true",
                    help="INSECURE: let any user name and password log in (for local development)")

    # SUPPRESS: given before or after the action, neither default overwrites the other
    remote = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    remote.add_argument("--url", default=argparse.SUPPRESS,
                        help="the platform (default $SKERRY_URL, else http://127.0.0.1:8000)")
    remote.add_argument("--token-file", default=argparse.SUPPRESS,
                        help="a file holding your hub API token (default: $SKERRY_TOKEN)")

    def remote_command(subparsers, name: str, help: str) -> argparse.ArgumentParser:
        # no abbreviations: '--token SECRET' must not pass as '--token-file'
        return subparsers.add_parser(name, parents=[remote], allow_abbrev=False, help=help)

    ds = remote_command(sub, "datasets", "list, create and close datasets; list their files")
    ds_sub = ds.add_subparsers(dest="action", metavar="ACTION")
    remote_command(ds_sub, "list", "your datasets (the default)")
    create = remote_command(ds_sub, "create", "a new OPEN dataset")
    create.add_argument("name")
    create.add_argument("--location", help="the skerry:// folder of its files")
    create.add_argument("--metadata", help="a JSON object of metadata")
    close = remote_command(ds_sub, "close", "OPEN -> CLOSED: no more files")
    close.add_argument("name")
    files = remote_command(ds_sub, "files", "list a dataset's files (or register some)")
    files.add_argument("name")
    files.add_argument("--register", metavar="FILE",
                       help="first register the files in FILE: a JSON list of {uri, size, checksum}, all or none")

    wf = remote_command(sub, "workflows", "list or add workflows")
    wf_sub = wf.add_subparsers(dest="action", metavar="ACTION")
    remote_command(wf_sub, "list", "every workflow (the default)")
    add = remote_command(wf_sub, "add", "add a workflow spec (a JSON or YAML file)")
    add.add_argument("file")

    run = remote_command(sub, "run", "start a run of a workflow over a dataset")
    run.add_argument("workflow")
    run.add_argument("dataset")
    run.add_argument("--rank", type=float, help="the rank of its tasks: their share of the pools (default 1)")
    run.add_argument("--wait", action="store_true", help="wait for the run to end, with a progress bar")

    status = remote_command(sub, "status", "your runs, or one run's tasks")
    status.add_argument("run", nargs="?", type=int)
    status.add_argument("--wait", action="store_true", help="with RUN: wait for it to end, with a progress bar")

    cancel = remote_command(sub, "cancel", "cancel a task and its jobs that are not final")
    cancel.add_argument("task", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            from .platform import Options, up

            return up(Options(data_dir=args.data_dir, ip=args.ip, port=args.port, dev=args.dev,
                              account_template=args.account_template, ssl_cert=args.ssl_cert,
                              ssl_key=args.ssl_key, proxy=args.proxy))
        return _remote(args)
    except SkerryError as e:
        print(f"skerry: error: {e}", file=sys.stderr)
        return 2


def _remote(args) -> int:
    from .workload.client import Client

    client = Client.connect(getattr(args, "url", None), getattr(args, "token_file", None))
    try:
        return COMMANDS[args.command](client, args)
    except KeyboardInterrupt:
        print("\nskerry: interrupted (a run goes on; see `skerry status`)", file=sys.stderr)
        return 130
    finally:
        client.close()


# ---- commands -----------------------------------------------------------------


def _datasets(client, args) -> int:
    action = args.action or "list"
    if action == "list":
        _table(["NAME", "STATE", "OWNER", "CREATED"],
               [[d["name"], d["state"], d["owner"], d["created"][:19]] for d in client.datasets()])
    elif action == "create":
        d = client.create_dataset(args.name, location=args.location, metadata=_json_arg(args.metadata, "--metadata"))
        print(f"created dataset {d['name']} ({d['state']})")
    elif action == "close":
        d = client.close_dataset(args.name)
        print(f"dataset {d['name']} is {d['state']} ({d['files']} files)")
    elif action == "files":
        if args.register:
            entries = _load(args.register)
            if not isinstance(entries, list):
                raise SkerryError(f"{args.register} must hold a JSON list of {{uri, size, checksum}} objects")
            print(f"registered {client.register_files(args.name, entries)} files in {args.name}", file=sys.stderr)
        _table(["ID", "URI", "SIZE", "CHECKSUM", "STATE"],
               ([f["id"], f["uri"], f["size"], f["checksum"] or "-", f["state"]] for f in client.files(args.name)))
    return 0


def _workflows(client, args) -> int:
    if (args.action or "list") == "list":
        _table(["NAME", "STEPS", "MASK"],
               [[w["name"], " -> ".join(w["steps"]), w["mask"] or "-"] for w in client.workflows()])
    else:
        spec = _load(args.file)
        if not isinstance(spec, dict):
            raise SkerryError(f"{args.file} must hold one workflow spec (a mapping with name and steps)")
        w = client.add_workflow(spec)
        print(f"added workflow {w['name']}: {' -> '.join(w['steps'])}")
    return 0


def _run(client, args) -> int:
    run_id = client.run(args.workflow, args.dataset, args.rank)
    print(f"started run {run_id} of {args.workflow} over {args.dataset}")
    return _wait(client, run_id) if args.wait else 0


def _status(client, args) -> int:
    if args.run is None:
        if args.wait:
            raise SkerryError("--wait needs a RUN to wait for")
        _table(["RUN", "WORKFLOW", "DATASET", "STATE", "JOBS DONE", "FAILED"],
               [[r["id"], r["workflow"], r["dataset"] or "-", r["state"],
                 f"{r['jobs']['succeeded']}/{r['jobs']['total']}", r["jobs"]["failed"]] for r in client.runs()])
        return 0
    if args.wait:
        return _wait(client, args.run)
    run = client.get_run(args.run)
    print(f"run {run['id']}: {run['workflow']} over {run['dataset'] or '-'}, {run['state']}")
    _table(["TASK", "STEP", "MODULE", "STATE", "RANK", "JOBS DONE", "FAILED", "RUNNING", "QUEUED"],
           [[t["id"], t["step"], t["module"], t["state"], f"{t['rank']:g}",
             f"{t['jobs']['succeeded']}/{t['jobs']['total']}", t["jobs"]["failed"],
             t["jobs"]["by_state"]["running"], t["jobs"]["by_state"]["queued"]] for t in run["tasks"]])
    _failed_jobs(client, run)
    return 0


def _cancel(client, args) -> int:
    t = client.cancel(args.task)
    print(f"task {t['id']} ({t['step']}) is {t['state']}; {t['jobs']['by_state']['cancelled']} jobs cancelled")
    return 0


COMMANDS = {"datasets": _datasets, "workflows": _workflows, "run": _run, "status": _status, "cancel": _cancel}


# ---- waiting, tables, files -------------------------------------------------------


def _ended(run: dict) -> str | None:
    """The run's final state, or None while it goes on."""
    if run["state"] in FINAL:
        return run["state"]
    return run_outcome(t["state"] for t in run["tasks"])


def progress_bar(done: int, failed: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########.....]  60% 600/1000 jobs (3 failed)``."""
    share = (done + failed) / total if total else 0.0
    filled = int(share * width)
    text = f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%} {done}/{total} jobs"
    return text + (f" ({failed} failed)" if failed else "")


def _wait(client, run_id: int) -> int:
    """Follow the run until it ends, drawing a progress bar on stderr (redrawn every
    ``POLL_S`` seconds; the run's end is answered at once); 0 if it succeeded, else 1."""
    tty = sys.stderr.isatty()
    last = None
    while True:
        run = client.get_run(run_id, wait=POLL_S if last is not None else 0)
        jobs = run["jobs"]
        bar = progress_bar(jobs["succeeded"], jobs["failed"], jobs["total"])
        if bar != last:
            # on a terminal the bar redraws in place; in a log, a line per change
            print(("\r" + bar) if tty else bar, end="" if tty else "\n", file=sys.stderr, flush=True)
            last = bar
        ended = _ended(run)
        if ended:
            if tty:
                print(file=sys.stderr)
            print(f"run {run_id} {ended}: {jobs['succeeded']} of {jobs['total']} jobs succeeded, "
                  f"{jobs['failed']} failed")
            _failed_jobs(client, run)
            return 0 if ended == "succeeded" else 1


def _failed_jobs(client, run: dict) -> None:
    """The run's failed jobs: what went wrong (error class and sentence) and where the log
    opens (the output notebook of a notebook step), at most ``FAILED_SHOWN`` of them."""
    if not run["jobs"]["failed"]:
        return
    prefix = f"{client.url}/user/{run['owner']}/" if run.get("owner") else None
    rows = []
    for task in run["tasks"]:  # a run as GET runs/<id> gives it
        if task["jobs"]["failed"] and len(rows) < FAILED_SHOWN:
            page = client.jobs(task=task["id"], state="failed", limit=FAILED_SHOWN - len(rows))["jobs"]
            rows += [[j["id"], task["step"], j["error_class"] or "-", j["error"] or "-",
                      (log_href(j["log"], prefix) if prefix else None) or j["log"] or "-"] for j in page]
    print(f"failed jobs ({run['jobs']['failed']}):")
    _table(["JOB", "STEP", "ERROR", "REASON", "LOG"], rows)
    if run["jobs"]["failed"] > len(rows):
        print(f"... and {run['jobs']['failed'] - len(rows)} more: skerry status {run['id']} lists the first "
              f"{FAILED_SHOWN}; the API's GET jobs?task=<task>&state=failed lists them all")


def _table(header: list[str], rows) -> None:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _json_arg(text: str | None, what: str):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise SkerryError(f"{what} is not valid JSON ({e})") from None


def _load(path: str):
    """A JSON or YAML file's content; a sentence naming the file and line when it is neither."""
    import yaml  # a dependency of dask

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise SkerryError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SkerryError(f"{path} is neither JSON nor YAML{where}: {getattr(e, 'problem', None) or e}") from None


if __name__ == "__main__":
    sys.exit(main())
