#!/usr/bin/env python3
"""Instructions per idle GetRecords call: the idle cost in a unit that a noisy machine cannot move.

CPU time per idle poll varied threefold between windows on one machine (docs/performance.md,
7 Dec 2026), so a change worth less than that could not be seen there. This runs the setup of
`run.py --only cost` (idle shards on the Streams fault server, one pod) with the relay under
callgrind, zeroes its counts once every lease is taken, and after `--seconds` reports the
relay's instructions (every thread, everything it did in the window) per GetRecords call.

valgrind does not run the CPU's SHA extensions, so SHA-256 (SigV4) runs in software there at
several times its native cost; the report shows that share on its own and the total without it.

Usage: benches/instructions.py --relay target/release/dynamodb-nakadi-relay [--shards 100]
       [--seconds 20]      (needs valgrind: `make bench-instructions` installs it)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the bench's own helpers)

SOFT_SHA = "sha2::sha256::soft"


def inclusive(out: Path, pattern: str) -> int:
    """The inclusive instruction count of the first function whose name contains `pattern`."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)],
                          capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        if pattern in line:
            return int(line.split("(")[0].replace(",", "").strip())
    return 0


def total(out: Path) -> int:
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"{out} has no summary line")
    return int(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", required=True)
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()

    procs = run.Procs("instructions")
    out = procs.dir / "callgrind.out"
    wrapper = procs.dir / "relay-under-callgrind.sh"
    wrapper.write_text(f'#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out} '
                       f'{Path(args.relay).resolve()} "$@"\n')
    wrapper.chmod(0o755)
    try:
        pod = run.idle_pod(procs, str(wrapper), args.shards, {}, 600)
        relay, fault = pod.relay, pod.fault
        # Past the takes' writes and the first polls' back-off, as the cost part waits.
        time.sleep(10)
        subprocess.run(["callgrind_control", "--zero", str(relay.pid)], check=True, capture_output=True)
        calls0 = run.get_json(f"{fault}/_test/calls").get("GetRecords", 0)
        time.sleep(args.seconds)
        calls = run.get_json(f"{fault}/_test/calls").get("GetRecords", 0) - calls0
        subprocess.run(["callgrind_control", "--dump", str(relay.pid)], check=True, capture_output=True)
    finally:
        procs.stop()
    dumps = sorted(procs.dir.glob("callgrind.out.*"), key=os.path.getmtime)
    if not dumps or calls <= 0:
        raise SystemExit(f"no dump or no GetRecords calls; see {procs.dir}")
    dump = dumps[-1]
    all_ir, sha_ir = total(dump), inclusive(dump, SOFT_SHA)
    print(f"{args.shards} idle shards, {args.seconds:.0f} s, {calls} GetRecords calls")
    print(f"instructions per call: {all_ir / calls:,.0f} "
          f"({(all_ir - sha_ir) / calls:,.0f} without software SHA-256, {sha_ir / calls:,.0f} in it)")
    print(f"callgrind output: {dump}")


if __name__ == "__main__":
    main()
