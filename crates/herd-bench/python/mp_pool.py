"""Python baseline for herd-bench's `pool` suite: multiprocessing.Pool with
a trivial task, sized like herd's pool.

Usage: python3 mp_pool.py CASE N WORKERS -> {"tasks_s": ...}
CASE: apply_async_all (submit N, then gather), apply_async_one_at_a_time
(submit, wait, repeat), map_chunk1, map_auto (Python's default chunking).
The best of three runs, in one pool (started before timing).
"""
import json
import multiprocessing as mp
import sys
import time


def noop(x):
    return x + 1


def run(case, pool, n):
    t = time.perf_counter()
    if case == "apply_async_all":
        rs = [pool.apply_async(noop, (i,)) for i in range(n)]
        for r in rs:
            r.get()
    elif case == "apply_async_one_at_a_time":
        for i in range(n):
            pool.apply_async(noop, (i,)).get()
    elif case == "map_chunk1":
        pool.map(noop, range(n), chunksize=1)
    elif case == "map_auto":
        pool.map(noop, range(n))
    else:
        raise SystemExit(f"unknown case {case}")
    return n / (time.perf_counter() - t)


def main():
    case, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with mp.Pool(workers) as pool:
        pool.map(noop, range(workers * 4), chunksize=1)  # workers up
        best = max(run(case, pool, n) for _ in range(3))
    print(json.dumps({"tasks_s": best, "start_method": mp.get_start_method()}))


if __name__ == "__main__":
    main()
