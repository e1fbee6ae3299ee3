"""Python baseline for herd-bench's `distributed` suite: BaseManager serving
a task queue and a result queue on loopback with an authkey (the seed's
task_master.py / task_worker.py).

Usage: python3 mp_manager.py seq N      -> {"ops_s": ...}   put, then get: each call a round trip
       python3 mp_manager.py e2e N      -> {"tasks_s": ...} a master and 2 worker processes
"""
import json
import multiprocessing as mp
import queue
import sys
import time
from multiprocessing.managers import BaseManager

KEY = b"bench-key"
task_q = queue.Queue()
result_q = queue.Queue()


def get_task():
    return task_q


def get_result():
    return result_q


class Master(BaseManager):
    pass


Master.register("get_task_queue", callable=get_task)
Master.register("get_result_queue", callable=get_result)


class Worker(BaseManager):
    pass


Worker.register("get_task_queue")
Worker.register("get_result_queue")


def worker(addr, n):
    m = Worker(address=addr, authkey=KEY)
    m.connect()
    tasks, results = m.get_task_queue(), m.get_result_queue()
    while True:
        t = tasks.get()
        if t is None:
            return
        results.put(t * t)


def main():
    mode, n = sys.argv[1], int(sys.argv[2])
    m = Master(address=("127.0.0.1", 0), authkey=KEY)
    m.start()
    addr = m.address
    tasks, results = m.get_task_queue(), m.get_result_queue()
    if mode == "seq":
        t = time.perf_counter()
        for i in range(n):
            tasks.put(i)
            tasks.get()
        print(json.dumps({"ops_s": 2 * n / (time.perf_counter() - t)}))
    else:
        ws = [mp.Process(target=worker, args=(addr, n)) for _ in range(2)]
        for w in ws:
            w.start()
        t = time.perf_counter()
        for i in range(n):
            tasks.put(i)
        for _ in range(n):
            results.get()
        dt = time.perf_counter() - t
        for _ in ws:
            tasks.put(None)
        for w in ws:
            w.join()
        print(json.dumps({"tasks_s": n / dt}))
    m.shutdown()


if __name__ == "__main__":
    main()
