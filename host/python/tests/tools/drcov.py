# Block coverage of a program from its main, as a drcov file (Lighthouse, bncov), with
# PyQBDI's pyqbdipreload convention: python -m pyqbdipreload drcov.py PROGRAM ARGS...
# The file is DRCOV_OUT, else drcov.<pid>.log.
import atexit
import os
import struct
import pyqbdi

blocks = {}


def on_block(vm, state, gpr, fpr, data):
    blocks[state.basicBlockStart] = state.basicBlockEnd - state.basicBlockStart
    return pyqbdi.CONTINUE


def write_coverage():
    mods = {}
    for m in pyqbdi.getCurrentProcessMaps(True):
        if m.name.startswith("/"):
            lo, hi, x = mods.get(m.name, (m.range.start, m.range.end, False))
            mods[m.name] = (min(lo, m.range.start), max(hi, m.range.end),
                            x or bool(m.permission & pyqbdi.PF_EXEC))
    mods = [(n, lo, hi) for n, (lo, hi, x) in mods.items() if x]
    table = []
    for start, size in blocks.items():
        for i, (n, lo, hi) in enumerate(mods):
            if lo <= start < hi:
                table.append(struct.pack("<IHH", start - lo, size, i))
    with open(os.environ.get("DRCOV_OUT", "drcov.%d.log" % os.getpid()), "wb") as f:
        f.write(b"DRCOV VERSION: 2\nDRCOV FLAVOR: drcov\n")
        f.write(b"Module Table: version 2, count %d\n" % len(mods))
        f.write(b"Columns: id, base, end, entry, path\n")
        for i, (n, lo, hi) in enumerate(mods):
            f.write(b"%d, 0x%x, 0x%x, 0x0000000000000000, %s\n" % (i, lo, hi, n.encode()))
        f.write(b"BB Table: %d bbs\n" % len(table) + b"".join(table))


def pyqbdipreload_on_run(vm, start, stop):
    vm.addVMEventCB(pyqbdi.BASIC_BLOCK_NEW, on_block, None)
    atexit.register(write_coverage)
    vm.run(start, stop)
