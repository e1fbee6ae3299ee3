"""Python baseline for herd-bench's `spawn` suite.

Median start+join latency of a trivial task with multiprocessing.Process,
for one start method. Usage: python3 spawn.py METHOD REPS
Prints one JSON object: {"method": ..., "median_us": ..., "reps": ...}.
"""
import json
import multiprocessing as mp
import statistics
import sys
import time


def trivial():
    return None


def main():
    method, reps = sys.argv[1], int(sys.argv[2])
    ctx = mp.get_context(method)
    # Warm up: the forkserver starts on first use, imports get cached.
    for _ in range(3):
        p = ctx.Process(target=trivial)
        p.start()
        p.join()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        p = ctx.Process(target=trivial)
        p.start()
        p.join()
        samples.append((time.perf_counter() - t) * 1e6)
    print(json.dumps({"method": method, "median_us": statistics.median(samples), "reps": reps}))


if __name__ == "__main__":
    main()
