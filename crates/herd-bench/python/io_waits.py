"""Python baseline for herd-bench's `io` suite: N concurrent simulated IO
waits (sleeps) as asyncio coroutines or as threads.

Usage: python3 io_waits.py asyncio|threads N WAIT_MS
-> {"elapsed_ms": ..., "extra_mb": ...}  (extra_mb: resident memory added
while every wait is in flight, over the interpreter's own)
"""
import asyncio
import json
import os
import sys
import threading
import time


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    kind, n, wait_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    base = rss_mb()
    peak = [base]
    t = time.perf_counter()
    if kind == "asyncio":
        async def one():
            await asyncio.sleep(wait_ms / 1000)

        async def all_of_them():
            tasks = [asyncio.create_task(one()) for _ in range(n)]
            await asyncio.sleep(0)
            peak[0] = rss_mb()
            await asyncio.gather(*tasks)

        asyncio.run(all_of_them())
    else:
        threading.stack_size(64 * 1024)
        # The start signal is a pipe: a blocked read holds no GIL. (An Event
        # makes 10 000 threads queue for the GIL one switch interval at a
        # time: minutes.)
        r, w = os.pipe()

        def one():
            os.read(r, 1)
            time.sleep(wait_ms / 1000)

        ts = [threading.Thread(target=one) for _ in range(n)]
        for th in ts:
            th.start()
        peak[0] = rss_mb()  # every thread alive, waiting for the start
        os.write(w, b"x" * n)
        for th in ts:
            th.join()
    elapsed = (time.perf_counter() - t) * 1000
    print(json.dumps({"elapsed_ms": elapsed, "extra_mb": peak[0] - base}))


if __name__ == "__main__":
    main()
