"""Python baseline for herd-bench's `spawn` suite.

Start+join latency of a trivial task with multiprocessing.Process.

    python3 spawn.py serve        one round per line on stdin (a method:
                                  fork, forkserver or spawn), answered with
                                  the microseconds it took (what the suite
                                  uses, interleaved with its other cases)
    python3 spawn.py METHOD REPS  a loop of its own; prints one JSON object:
                                  {"method": ..., "median_us": ..., "reps": ...}
"""
import json
import multiprocessing as mp
import statistics
import sys
import time


def trivial():
    return None


def serve():
    contexts = {}
    for line in sys.stdin:
        method = line.strip()
        if not method:
            continue
        ctx = contexts.setdefault(method, mp.get_context(method))
        t = time.perf_counter()
        p = ctx.Process(target=trivial)
        p.start()
        p.join()
        sys.stdout.write(f"{(time.perf_counter() - t) * 1e6}\n")
        sys.stdout.flush()


def main():
    if sys.argv[1] == "serve":
        serve()
        return
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
