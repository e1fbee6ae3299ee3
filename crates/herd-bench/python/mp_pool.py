"""Python baseline for herd-bench's `pool` suite: multiprocessing.Pool with
a trivial task, sized like herd's pool.

Usage: python3 mp_pool.py CASE N WORKERS -> {"tasks_s": ...}
       python3 mp_pool.py copy_files DIR WORKERS -> {"one_files_s": ..., "pool_files_s": ...}
CASE: apply_async_all (submit N, then gather), apply_async_one_at_a_time
(submit, wait, repeat), map_chunk1, map_auto (Python's default chunking).
The best of three runs, in one pool (started before timing).
"""
import json
import multiprocessing as mp
import os
import shutil
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


def copy_one(pair):
    shutil.copyfile(pair[0], pair[1])
    return os.path.getsize(pair[1])


def copy_files(srcdir, workers):
    """The seed's S6: copy every file in SRCDIR, in one process, then with a
    pool; files/s for each (best of three)."""
    names = sorted(os.listdir(srcdir))
    pairs = [(os.path.join(srcdir, n), os.path.join(srcdir, n + ".py-copy")) for n in names]
    best_one = best_pool = 0.0
    with mp.Pool(workers) as pool:
        pool.map(noop, range(workers * 4), chunksize=1)  # workers up
        for _ in range(3):
            t = time.perf_counter()
            for pair in pairs:
                copy_one(pair)
            best_one = max(best_one, len(pairs) / (time.perf_counter() - t))
            t = time.perf_counter()
            pool.map(copy_one, pairs)
            best_pool = max(best_pool, len(pairs) / (time.perf_counter() - t))
    for _, dst in pairs:
        os.remove(dst)
    return {"one_files_s": best_one, "pool_files_s": best_pool}


def main():
    if sys.argv[1] == "copy_files":
        print(json.dumps(copy_files(sys.argv[2], int(sys.argv[3]))))
        return
    case, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with mp.Pool(workers) as pool:
        pool.map(noop, range(workers * 4), chunksize=1)  # workers up
        best = max(run(case, pool, n) for _ in range(3))
    print(json.dumps({"tasks_s": best, "start_method": mp.get_start_method()}))


if __name__ == "__main__":
    main()
