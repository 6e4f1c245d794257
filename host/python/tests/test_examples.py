"""QBDI's documented PyQBDI examples, run unchanged as scripts (memory helpers, calling `foo`
from a library, the sin tracer, basic-block, coverage, edge-coverage and exec-transfer
snippets)."""

import math
import os
import re
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")


def run(script, *args):
    p = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_trace_sin_prints_the_same_as_math_sin():
    out = run("trace_sin.py").splitlines()
    last = out[-1]
    assert last == "%f (python) vs %f (qbdi)" % (math.sin(1.0), math.sin(1.0))
    trace = out[:-1]
    assert len(trace) > 10 and all(re.match(r"0x[0-9a-f]+: \S", l) for l in trace)


def test_call_foo_from_a_library(foo_lib):
    out = run("call_foo.py", foo_lib).splitlines()
    assert out[0].split(" = ")[1] == out[1].split(" = ")[1]


def test_memory_helpers_example():
    assert run("memory.py").splitlines() == ["b'Hello world'", "0x1234", "1.5 -2.25"]


def test_basic_block_coverage_and_edges(foo_lib):
    out = run("basic_block.py", foo_lib, "foo")
    blocks = re.findall(r"start:0x([0-9a-f]+), end:0x([0-9a-f]+)", out)
    assert len(blocks) > 10  # a loop of 10 iterations
    assert all(int(e, 16) > int(s, 16) for s, e in blocks)
    cov = int(re.search(r"coverage (\d+)", out).group(1))
    assert cov == len(set(blocks))
    edges = int(re.search(r"edges (\d+)", out).group(1))
    assert edges >= cov - 1
    assert "transfers 0" in out


def test_exec_transfer_snippet(guest_path):
    out = run("basic_block.py", guest_path, "smoke_libc")
    n = int(re.search(r"transfers (\d+)", out).group(1))
    assert n > 0 and n % 2 == 0
    assert "VMEvent.EXEC_TRANSFER_CALL" in out and "VMEvent.EXEC_TRANSFER_RETURN" in out
