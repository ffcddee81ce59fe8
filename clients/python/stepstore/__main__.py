"""``python -m stepstore sync``: sends the requests spooled while the
server was unreachable, in order (idempotency keys make a repeat harmless)."""

import argparse
import os
import sys

from ._spool import default_spool_dir, runs_in, sync


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepstore")
    commands = parser.add_subparsers(dest="command", required=True)
    sync_parser = commands.add_parser("sync", help="send the spooled requests")
    sync_parser.add_argument(
        "--spool-dir",
        default=str(default_spool_dir()),
        help="the spool (default: $STEPSTORE_SPOOL_DIR or ~/.cache/stepstore/spool)",
    )
    sync_parser.add_argument(
        "--url", default=None, help="send to this server instead of the one each request was for"
    )
    sync_parser.add_argument(
        "--token", default=os.environ.get("STEPSTORE_TOKEN"), help="default: $STEPSTORE_TOKEN"
    )
    status_parser = commands.add_parser("status", help="list the spooled requests per run")
    status_parser.add_argument("--spool-dir", default=str(default_spool_dir()))
    args = parser.parse_args(argv)
    if args.command == "status":
        runs = runs_in(args.spool_dir)
        for run_id in runs:
            print(run_id, len(os.listdir(os.path.join(args.spool_dir, run_id))), "request(s)")
        if not runs:
            print("nothing spooled in", args.spool_dir)
        return 0
    sent, refused, left = sync(args.spool_dir, args.url, args.token)
    print(f"sent {sent} request(s), {refused} refused (kept under failed/), {left} left")
    return 0 if left == 0 and refused == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
