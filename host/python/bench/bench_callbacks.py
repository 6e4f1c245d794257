#!/usr/bin/env python3
"""Per-block cost of a counting Python callback (BASIC_BLOCK_ENTRY), and per-instruction
cost of a counting PREINST code callback, on whichever `pyqbdi` this interpreter imports
(this project's, or QBDI's PyQBDI: the script uses PyQBDI's API only).

usage: bench_callbacks.py LIBBENCH.so [ITERATIONS]
Prints one line per measure: `name: N events, X ns per event` (best of 5 runs, minus the
same run with no callback)."""

import ctypes
import sys
import time

import pyqbdi

lib = ctypes.CDLL(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
engine = "qbdi-rs" if hasattr(pyqbdi, "__engine_version__") else "QBDI " + pyqbdi.__version__


def best(f, runs=5):
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        f()
        t.append(time.perf_counter() - s)
    return min(t)


def measure(fname, register):
    func = ctypes.cast(getattr(lib, fname), ctypes.c_void_p).value
    vm = pyqbdi.VM()
    stack = pyqbdi.allocateVirtualStack(vm.getGPRState(), 0x100000)
    vm.addInstrumentedModuleFromAddr(func)
    run = lambda: vm.call(func, [N])
    run()
    base = best(run)
    count = [0]
    register(vm, count)
    run()
    count[0] = 0
    run()
    events = count[0]
    with_cb = best(run)
    pyqbdi.alignedFree(stack)
    return events, (with_cb - base) / events * 1e9, base


def bb(vm, count):
    def cb(vm, state, gpr, fpr, data):
        count[0] += 1
        return pyqbdi.CONTINUE
    vm.addVMEventCB(pyqbdi.BASIC_BLOCK_ENTRY, cb, None)


def inst(vm, count):
    def cb(vm, gpr, fpr, data):
        count[0] += 1
        return pyqbdi.CONTINUE
    vm.addCodeCB(pyqbdi.PREINST, cb, None)


def bb_reads_state(vm, count):
    def cb(vm, state, gpr, fpr, data):
        count[0] += 1
        data.add(state.basicBlockStart + gpr.rsp - gpr.rsp)
        return pyqbdi.CONTINUE
    vm.addVMEventCB(pyqbdi.BASIC_BLOCK_ENTRY, cb, set())


print("engine: %s, python %d.%d, %d iterations" % ((engine,) + sys.version_info[:2] + (N,)))
for name, fname, reg in [("BASIC_BLOCK_ENTRY count", "bench_loop", bb),
                         ("BASIC_BLOCK_ENTRY count (branchy)", "bench_branchy", bb),
                         ("BASIC_BLOCK_ENTRY reading state", "bench_branchy", bb_reads_state),
                         ("PREINST code callback count", "bench_loop", inst)]:
    events, ns, base = measure(fname, reg)
    print("%-36s %9d events, %7.0f ns per event (run without callback: %.1f ms)"
          % (name + ":", events, ns, base * 1e3))
