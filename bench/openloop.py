"""Open-loop load from a separate process, shared by the serving benches.

Requests leave at a fixed arrival rate whatever the server does, and each latency is taken from the request's
intended send time, so queueing cannot hide. The load runs in its own process (pinned to a CPU of its own where
`taskset` exists and the machine has one to spare), so its work does not steal the measured server's.

    python bench/openloop.py --url URL --body-file F --rate R --duration S --out OUT.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUEST_TIMEOUT = 10.0  # a request unanswered by then counts as an error, not as a latency


@dataclass
class Load:
    rate: float
    duration: float
    sent_rate: float
    latencies: np.ndarray  # seconds, answered requests only
    errors: int
    cpu: float  # the load process's own CPU seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies.size else float("nan")


async def _open_loop(url: str, body: bytes, rate: float, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)  # no client-side queue: every request goes out when it is due
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"content-type": "application/json"}) as session:

        async def one(intended: float) -> None:
            nonlocal errors
            try:
                async with session.post(url, data=body) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(time.perf_counter() - intended)

        tasks = []
        n = int(rate * duration)
        start = time.perf_counter() + 0.05
        for i in range(n):
            intended = start + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(intended)))
        sent_in = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "errors": errors, "sent_rate": n / max(sent_in, 1e-9),
            "cpu": time.process_time()}


def spare_cpu() -> int | None:
    """The CPU the load process is pinned to (the last one), or None where pinning is not possible."""
    return (os.cpu_count() or 1) - 1 if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else None


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """argv run under `taskset -c cpus` where that is possible (children inherit the affinity)."""
    return ["taskset", "-c", cpus, *argv] if cpus is not None and shutil.which("taskset") else argv


def run(url: str, body: bytes, rate: float, duration: float) -> Load:
    """One open-loop phase from a separate process; blocks until every request is answered or timed out."""
    with tempfile.TemporaryDirectory(prefix="mlcycle-load-") as tmp:
        (Path(tmp) / "body").write_bytes(body)
        out = Path(tmp) / "out.json"
        cpu = spare_cpu()
        subprocess.run(pinned([sys.executable, __file__, "--url", url, "--body-file", str(Path(tmp) / "body"),
                               "--rate", str(rate), "--duration", str(duration), "--out", str(out)],
                              None if cpu is None else str(cpu)), check=True)
        data = json.loads(out.read_text())
    return Load(rate, duration, data["sent_rate"], np.asarray(data["latencies"]), data["errors"], data["cpu"])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU so far of a process and every descendant alive (Linux /proc): a server's whole cost,
    BentoML's arbiter and workers included."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        stack += _children(current)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(_open_loop(args.url, Path(args.body_file).read_bytes(), args.rate, args.duration))
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
