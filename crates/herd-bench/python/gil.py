"""Python baseline for herd-bench's `scaling` suite: the seed's GIL point.

Usage: python3 gil.py WORKERS ITERS -> {"threads_s": ..., "processes_s": ...}
WORKERS threads, then WORKERS processes, each running the same CPU-bound
loop of ITERS steps; the wall time of each.
"""
import json
import multiprocessing as mp
import sys
import threading
import time


def burn(iters):
    x = 88172645463325252
    for _ in range(iters):
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
    return x


def main():
    workers, iters = int(sys.argv[1]), int(sys.argv[2])
    t = time.perf_counter()
    ts = [threading.Thread(target=burn, args=(iters,)) for _ in range(workers)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    threads_s = time.perf_counter() - t
    with mp.Pool(workers) as pool:
        pool.map(burn, [1] * workers, chunksize=1)  # workers up
        t = time.perf_counter()
        pool.map(burn, [iters] * workers, chunksize=1)
        processes_s = time.perf_counter() - t
    print(json.dumps({"threads_s": threads_s, "processes_s": processes_s}))


if __name__ == "__main__":
    main()
