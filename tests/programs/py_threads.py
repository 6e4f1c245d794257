"""Threads in Python, for the tests of threads followed (tests/tests/threads.rs): work on
threading.Thread objects, a ThreadPoolExecutor and a lock-protected counter. The output is
the same every run."""

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def chunk(i):
    return sum(collatz_steps(n) for n in range(i * 150 + 1, (i + 1) * 150 + 1))


results = [None] * 4


def run(i):
    results[i] = chunk(i)


threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("threads:", results, sum(results))

with ThreadPoolExecutor(max_workers=4) as pool:
    squares = list(pool.map(lambda k: sum(j * j for j in range(k * 30)), range(16)))
    digests = list(pool.map(lambda k: hashlib.sha256(bytes([k]) * 50000).hexdigest()[:16], range(8)))
print("pool:", squares[-3:], sum(squares))
print("digests:", " ".join(digests))

counter = 0
lock = threading.Lock()


def add(n):
    global counter
    for _ in range(n):
        with lock:
            counter += 1


adders = [threading.Thread(target=add, args=(300,)) for _ in range(4)]
for t in adders:
    t.start()
for t in adders:
    t.join()
print("counter:", counter, "threads alive:", threading.active_count())
