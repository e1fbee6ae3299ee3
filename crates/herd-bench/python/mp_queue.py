"""Python baseline for herd-bench's `queue` suite: multiprocessing.Queue or
multiprocessing.Pipe, one producer process to the consuming parent.

Usage: python3 mp_queue.py queue|pipe SIZE N  -> {"msgs_s": ..., "mb_s": ...}
(The file is not named queue.py: that would shadow the standard library's
queue module, which multiprocessing imports.)
"""
import json
import multiprocessing as mp
import sys
import time


def produce_queue(q, payload, n):
    for _ in range(n):
        q.put(payload)


def produce_pipe(conn, payload, n):
    for _ in range(n):
        conn.send_bytes(payload)


def main():
    kind, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    payload = b"x" * size
    if kind == "pipe":
        rx, tx = mp.Pipe(duplex=False)
        p = mp.Process(target=produce_pipe, args=(tx, payload, n))
        take = rx.recv_bytes
    else:
        q = mp.Queue()
        p = mp.Process(target=produce_queue, args=(q, payload, n))
        take = q.get
    t = time.perf_counter()
    p.start()
    for _ in range(n):
        take()
    dt = time.perf_counter() - t
    p.join()
    print(json.dumps({"msgs_s": n / dt, "mb_s": n * size / dt / 1e6}))


if __name__ == "__main__":
    main()
