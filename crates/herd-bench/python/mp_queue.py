"""Python baseline for herd-bench's `queue` suite: multiprocessing.Queue,
one producer process to the consuming parent.

Usage: python3 queue.py SIZE N  -> {"msgs_s": ..., "mb_s": ...}
"""
import json
import multiprocessing as mp
import sys
import time


def produce(q, payload, n):
    for _ in range(n):
        q.put(payload)


def main():
    size, n = int(sys.argv[1]), int(sys.argv[2])
    payload = b"x" * size
    q = mp.Queue()
    p = mp.Process(target=produce, args=(q, payload, n))
    t = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get()
    dt = time.perf_counter() - t
    p.join()
    print(json.dumps({"msgs_s": n / dt, "mb_s": n * size / dt / 1e6}))


if __name__ == "__main__":
    main()
