"""CPU seconds an ``optout`` process spends starting (README, "Process start-up").

    .venv/bin/python -m benchmarks.bench_startup [--runs 3] [--base /path/to/other/checkout]

For each command below: the CPU time (user + system, of the process alone) of one
``python -m services.cli.main ...``, best of ``--runs``. A command runs until it exits; a
service (``run ...``) until it logs ``consuming`` (its consume loop is up), then gets SIGTERM
and stops as it would in production. With ``--base``, the same commands run from that
checkout too (e.g. a ``git worktree`` of an older commit), interleaved with ours, side by side:
the machine's load shifts both alike. A fresh database and topics (unique prefix) of the local
stack; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import close_env, load_average, note, open_env, setup_logging, start_stack

OURS = Path(__file__).resolve().parents[1]
COMMANDS: list[list[str]] = [
    ["--help"],
    ["config", "--markdown"],
    ["lag", "--help"],
    ["run", "intake"],
    ["run", "confirmer"],
    ["run", "connector", "email_provider"],
]


def cpu_seconds(checkout: Path, args: Sequence[str], variables: Mapping[str, str]) -> float:
    """User + system CPU seconds of one ``optout ARGS`` process run from ``checkout``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=checkout,  # `python -m` puts the working directory first: that checkout's code runs
        env=dict(variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    if args[0] == "run":
        seen: list[bytes] = []
        for line in proc.stdout:
            seen.append(line)
            if b'"consuming"' in line:
                proc.send_signal(signal.SIGTERM)
                break
        else:
            proc.wait()
            raise SystemExit(
                f"optout {' '.join(args)} exited before consuming:\n{b''.join(seen[-20:]).decode()}"
            )
    proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"optout {' '.join(args)} exited with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per command; the best counts")
    parser.add_argument("--base", type=Path, help="another checkout to compare with (runs first)")
    args = parser.parse_args(argv)
    setup_logging()
    load_start = load_average()
    env = open_env(start_stack(), "startup", partitions=1)
    variables = {
        **os.environ,
        "OPTOUT_KAFKA_BOOTSTRAP": env.settings.kafka_bootstrap,
        "OPTOUT_DATABASE_URL": env.dsn(),
        "OPTOUT_TOPIC_PREFIX": env.settings.topic_prefix,
        "OPTOUT_LOG_FORMAT": "json",
        "OPTOUT_METRICS_PORT": "0",
    }
    checkouts = [args.base.resolve(), OURS] if args.base else [OURS]
    rows: list[tuple[str, list[float]]] = []
    try:
        for command in COMMANDS:
            note(f"optout {' '.join(command)}")
            times: list[list[float]] = [[] for _ in checkouts]
            for _ in range(args.runs):
                for i, checkout in enumerate(checkouts):
                    times[i].append(cpu_seconds(checkout, command, variables))
            rows.append((" ".join(command), [min(t) for t in times]))
    finally:
        close_env(env)
    heads = ["before", "after"] if args.base else ["CPU s"]
    print(f"load average {load_start} -> {load_average()}; best of {args.runs} runs")
    print(f"{'command':38}" + "".join(f" {h:>8}" for h in heads))
    for name, best in rows:
        line = f"{'optout ' + name:38}" + "".join(f" {b:>8.2f}" for b in best)
        if args.base:
            line += f"  ({best[1] / best[0]:.2f}x)"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
