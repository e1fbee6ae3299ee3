"""Python baseline for herd-bench's `sync` suite: multiprocessing.Lock.

Usage: python3 sync.py uncontended N   -> raw acquire/release and `with` ops/s
       python3 sync.py contended N     -> 2 processes, N acquire/release each
Prints one JSON object.
"""
import json
import multiprocessing as mp
import sys
import time


def hammer(lock, n, start):
    start.wait()
    for _ in range(n):
        lock.acquire()
        lock.release()


def uncontended(n):
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release
    best_raw = best_with = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            acquire()
            release()
        best_raw = max(best_raw, n / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(n):
            with lock:
                pass
        best_with = max(best_with, n / (time.perf_counter() - t))
    return {"raw_ops_s": best_raw, "with_ops_s": best_with}


def contended(n):
    lock = mp.Lock()
    start = mp.Barrier(3)
    procs = [mp.Process(target=hammer, args=(lock, n, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    t = time.perf_counter()
    for p in procs:
        p.join()
    return {"ops_s": 2 * n / (time.perf_counter() - t)}


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    print(json.dumps(uncontended(n) if mode == "uncontended" else contended(n)))
