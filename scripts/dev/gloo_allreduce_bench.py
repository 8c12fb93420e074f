#!/usr/bin/env python3
"""torch.distributed gloo all-reduce on loopback, the reference for `hv-bench allreduce --torch VENV`.

Spawns --ranks processes (init tcp://127.0.0.1:PORT), and for each size runs one warm-up and
--runs timed all_reduce calls, each after a barrier. Per run the slowest rank's time counts;
the median over runs is reported. Prints one JSON line on stdout (rank 0 writes it).
"""
import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, args, port, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.ranks)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    results = []
    expected = args.ranks * (args.ranks + 1) / 2
    for size in args.bytes:
        count = size // 4
        buf = torch.empty(count, dtype=dtype)
        buf.fill_(rank + 1)
        dist.barrier()
        dist.all_reduce(buf)  # warm-up
        times = []
        for _ in range(args.runs):
            buf.fill_(rank + 1)
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - t0)
        ok = bool((buf == expected).all())
        t = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # slowest rank per run
        per_run = t.tolist()
        results.append({"bytes": size, "median_s": statistics.median(per_run), "min_s": min(per_run), "ok": ok})
    dist.barrier()
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--bytes", type=int, action="append", required=True)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=worker, args=(r, args, port, queue)) for r in range(args.ranks)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    if any(pr.exitcode != 0 for pr in procs):
        raise SystemExit(f"a rank failed: exit codes {[pr.exitcode for pr in procs]}")
    results = queue.get()
    print(json.dumps({"torch": torch.__version__, "ranks": args.ranks, "dtype": "bf16" if args.bf16 else "fp32",
                      "algorithm": "torch.distributed.all_reduce (gloo ring, CPU tensors)",
                      "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"), "results": results}))


if __name__ == "__main__":
    main()
