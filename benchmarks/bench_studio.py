"""The poem studio under load: `kedro serve` on 127.0.0.1, driven over HTTP by this process.

1. Latency of one request — 8 七绝 candidates, strict tones + rhyme, sampled (T 0.8, top-p 0.9),
   a new seed each time — sent one after another: p50 / p95 (target p50 ≤ 150 ms on the 2-core CPU).
2. Throughput: 32 concurrent clients, each sending that request again and again for 30 s, against
   the same requests sent one at a time for 30 s: requests/s, p50 / p95, errors (target ≥ 5× the
   serial throughput, no error, no dropped request).
3. The same with requests for 1 candidate (``--one-poem-seconds``; 0 skips it): how much merging
   gains depends on how many poems a request already decodes together.
4. The ceiling, in this process before the server starts, on one decoder thread as the server
   decodes: one request's poems decoded alone vs ``--clients`` requests merged into one batch, per
   request: what merging gains on the decoding alone. A server can gain somewhat more, since a
   request sent alone also waits for its HTTP handling and annotation, which requests under load
   overlap with the decoding of others on the second core.

Only 127.0.0.1, bounded in time (``--seconds``) and count (``--max-requests`` per phase). The model
is the latest version in data/06_models/poet (train one first: `kedro run`).

    python benchmarks/bench_studio.py [--seconds 30] [--clients 32] [--latency-requests 60] [--threads 0]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))
BODY = {"form": "qijue", "begin_words": ["春"], "acrostic": None, "tones": "strict", "rhyme": True,
        "strategy": "sample", "temperature": 0.8, "top_p": 0.9, "num_samples": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, threads: int, log: Path) -> subprocess.Popen:
    cmd = [KEDRO, "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kedro serve exited:\n{log.read_text()[-3000:]}")
        try:
            get(port, "/api/health")
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("kedro serve did not answer within 120 s")


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class Client:
    """One keep-alive connection; ``poems(seed)`` → (seconds, ok)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def poems(self, seed: int, num_samples: int = BODY["num_samples"]) -> tuple[float, bool]:
        body = json.dumps({**BODY, "seed": seed, "num_samples": num_samples})
        start = time.perf_counter()
        try:
            self.conn.request("POST", "/api/poems", body=body, headers={"Content-Type": "application/json"})
            response = self.conn.getresponse()
            data = response.read()
            ok = response.status == 200 and len(json.loads(data)["poems"]) == num_samples
        except (OSError, http.client.HTTPException, ValueError):
            self.conn.close()
            ok = False
        return time.perf_counter() - start, ok


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the server process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, pid: int, clients: int, seconds: float, max_requests: int, first_seed: int,
         num_samples: int = BODY["num_samples"]) -> dict:
    """``clients`` threads, each sending requests back to back until ``seconds`` pass."""
    counter = iter(range(first_seed, first_seed + max_requests))
    lock = threading.Lock()
    latencies, failures, sent = [], [0], [0]
    deadline = time.perf_counter() + seconds

    def work():
        client = Client(port)
        while time.perf_counter() < deadline:
            with lock:
                seed = next(counter, None)
                if seed is None:
                    return
                sent[0] += 1
            wall, ok = client.poems(seed, num_samples)
            with lock:
                if ok:
                    latencies.append(wall)
                else:
                    failures[0] += 1

    before, cpu = get(port, "/api/health"), cpu_seconds(pid)
    start = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu
    after = get(port, "/api/health")
    batches = after["batches"] - before["batches"]
    answered = after["requests"] - before["requests"]
    return {"clients": clients, "seconds": round(elapsed, 2), "sent": sent[0], "completed": len(latencies),
            "errors": failures[0], "dropped": sent[0] - len(latencies) - failures[0],
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "poems_per_s": round(len(latencies) * num_samples / elapsed, 1),
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1),
            "server_batches": batches, "requests_per_batch": round(answered / max(batches, 1), 2),
            "server_cpu_ms_per_request": round(1000 * cpu / max(len(latencies), 1), 1)}


def decoder_ceiling(requests: int, num_samples: int, repeats: int = 5) -> dict:
    """Decode time of one request alone vs per request in a batch of ``requests`` merged (medians)."""
    from kedro.framework.startup import bootstrap_project

    from tangshi_pipeline.studio.batching import decoder_thread
    from tangshi_pipeline.studio.load import load_poet

    bootstrap_project(ROOT)
    pool = decoder_thread()
    try:
        poet, _ = pool.submit(load_poet, ROOT).result()
        bodies = [poet.validate({**BODY, "seed": seed, "num_samples": num_samples}) for seed in range(requests)]

        def timed(batch) -> float:
            walls = []
            for _ in range(repeats + 1):  # the first is a warm-up
                start = time.perf_counter()
                pool.submit(poet.write_together, batch[0].group, batch).result()
                walls.append(time.perf_counter() - start)
            return statistics.median(walls[1:])

        alone, merged = timed(bodies[:1]), timed(bodies)
    finally:
        pool.shutdown()
    return {"requests": requests, "num_samples": num_samples, "alone_ms": round(1000 * alone, 1),
            "merged_ms": round(1000 * merged, 1), "merged_per_request_ms": round(1000 * merged / requests, 2),
            "ceiling": round(alone * requests / merged, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--latency-requests", type=int, default=60)
    ap.add_argument("--one-poem-seconds", type=float, default=15.0, help="phase 3, each way; 0 = skip")
    ap.add_argument("--max-requests", type=int, default=20_000, help="per phase, a bound on top of --seconds")
    ap.add_argument("--threads", type=int, default=0, help="the server's torch threads (0 = torch's default)")
    args = ap.parse_args()
    ceiling = {n: decoder_ceiling(args.clients, n) for n in (BODY["num_samples"], 1)}
    for n, c in ceiling.items():
        print(f"decoder alone vs {args.clients} merged, {n} poem(s) per request: {c['alone_ms']} ms vs "
              f"{c['merged_per_request_ms']} ms per request: ceiling {c['ceiling']}×", flush=True)
    port = free_port()
    log = Path("/tmp") / f"bench_studio_{port}.log"
    server = start_server(port, args.threads, log)
    try:
        client = Client(port)
        for seed in range(3):  # warm-up
            client.poems(seed)
        walls = [client.poems(1000 + i) for i in range(args.latency_requests)]
        latency = [w for w, ok in walls if ok]
        single = {"requests": len(walls), "errors": len(walls) - len(latency),
                  "p50_ms": round(1000 * percentile(latency, 50), 1),
                  "p95_ms": round(1000 * percentile(latency, 95), 1)}
        print(f"one request, 8 七绝 strict+rhyme sampled: p50 {single['p50_ms']} ms, p95 {single['p95_ms']} ms",
              flush=True)
        serial = load(port, server.pid, 1, args.seconds, args.max_requests, 100_000)
        print(f"serial:     {serial['requests_per_s']} req/s, p95 {serial['p95_ms']} ms, "
              f"{serial['server_cpu_ms_per_request']} ms CPU per request", flush=True)
        concurrent = load(port, server.pid, args.clients, args.seconds, args.max_requests, 200_000)
        print(f"{args.clients} clients: {concurrent['requests_per_s']} req/s, p95 {concurrent['p95_ms']} ms, "
              f"{concurrent['requests_per_batch']} requests per batch, "
              f"{concurrent['server_cpu_ms_per_request']} ms CPU per request", flush=True)
        one = {}
        if args.one_poem_seconds:
            one["serial"] = load(port, server.pid, 1, args.one_poem_seconds, args.max_requests, 300_000, 1)
            one["concurrent"] = load(port, server.pid, args.clients, args.one_poem_seconds, args.max_requests,
                                     400_000, 1)
            one["throughput_ratio"] = round(one["concurrent"]["requests_per_s"] / one["serial"]["requests_per_s"], 2)
            print(f"1 candidate per request: {one['serial']['requests_per_s']} req/s one at a time, "
                  f"{one['concurrent']['requests_per_s']} with {args.clients} clients "
                  f"({one['throughput_ratio']}×)", flush=True)
        model = get(port, "/api/health")["model"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    ratio = concurrent["requests_per_s"] / serial["requests_per_s"]
    merged = ceiling[BODY["num_samples"]]
    merged_rate = 1000 * BODY["num_samples"] / merged["merged_per_request_ms"]
    phases = [serial, concurrent] + ([one["serial"], one["concurrent"]] if one else [])
    loadavg = os.getloadavg()
    results = {"request": BODY, "model": model, "server_threads": args.threads or "torch default",
               "load_average_at_end": [round(x, 2) for x in loadavg], "one_request": single,
               "serial": serial, "concurrent": concurrent, "throughput_ratio": round(ratio, 2),
               "one_candidate": one, "decoder_ceiling": ceiling,
               "share_of_merged_decoder_rate": round(concurrent["poems_per_s"] / merged_rate, 3)}
    table = [
        ("one request: 8 七绝, strict + rhyme, sampled", f"p50 {single['p50_ms']} ms, p95 {single['p95_ms']} ms "
                                                         f"({single['requests']} requests; target p50 ≤ 150 ms)"),
        ("serial: one client, back to back, " + f"{args.seconds:g} s", f"{serial['requests_per_s']} req/s "
         f"({serial['poems_per_s']} poems/s), p50 {serial['p50_ms']} ms, p95 {serial['p95_ms']} ms"),
        (f"{args.clients} concurrent clients, {args.seconds:g} s", f"{concurrent['requests_per_s']} req/s "
         f"({concurrent['poems_per_s']} poems/s), p50 {concurrent['p50_ms']} ms, p95 {concurrent['p95_ms']} ms, "
         f"{concurrent['requests_per_batch']} requests per decoder batch"),
        ("throughput, concurrent ÷ serial", f"{ratio:.2f}× (target ≥ 5×)"),
        *((f"ceiling: {n} poem(s) per request decoded alone vs {c['requests']} merged, per request",
           f"{c['alone_ms']} vs {c['merged_per_request_ms']} ms → {c['ceiling']}× from merging the decoding "
           "(in-process, one decoder thread, before the server starts)") for n, c in ceiling.items()),
        ("32 clients' poems/s ÷ the merged decoder's poems/s (8 per request)",
         f"{concurrent['poems_per_s']} ÷ {merged_rate:.1f} = {concurrent['poems_per_s'] / merged_rate:.0%} "
         "(the issue's aim: throughput under load approaches the batched decoder's)"),
        ("server CPU time per request, serial vs concurrent",
         f"{serial['server_cpu_ms_per_request']} vs {concurrent['server_cpu_ms_per_request']} ms "
         f"({serial['server_cpu_ms_per_request'] / max(concurrent['server_cpu_ms_per_request'], 1e-9):.2f}×; "
         "user + system time of the server process, which other tenants of the CPU do not add to)"),
        *([("1 candidate per request: serial vs "
             f"{args.clients} clients, {args.one_poem_seconds:g} s each",
             f"{one['serial']['requests_per_s']} vs {one['concurrent']['requests_per_s']} req/s "
             f"({one['throughput_ratio']}×), p95 {one['serial']['p95_ms']} vs {one['concurrent']['p95_ms']} ms, "
             f"{one['concurrent']['requests_per_batch']} requests per batch")] if one else []),
        ("errors / dropped",
         f"{sum(r['errors'] for r in phases)} / {sum(r['dropped'] for r in phases)} (every phase)"),
        ("model", model),
        ("load average at the end (1, 5, 15 min)", ", ".join(f"{x:.2f}" for x in loadavg)),
    ]
    write_results("studio", results, table)
    print(f"throughput ratio {ratio:.2f}×")


if __name__ == "__main__":
    main()
