"""Memory access recording and memory callbacks."""

import pyqbdi
from conftest import addr


def test_record_and_read_accesses(vm, guest):
    fill = addr(guest, "smoke_fill")
    vm.addInstrumentedModuleFromAddr(fill)
    assert vm.recordMemoryAccess(pyqbdi.MEMORY_READ_WRITE)
    buf = pyqbdi.allocateMemory(8 * 4)
    writes = []

    def post(v, g, fp, d):
        for m in v.getInstMemoryAccess():
            if m.type == pyqbdi.MEMORY_WRITE and buf <= m.accessAddress < buf + 32:
                writes.append((m.accessAddress - buf, m.value, m.size))
        return pyqbdi.CONTINUE

    vm.addCodeCB(pyqbdi.POSTINST, post, None)
    vm.call(fill, [buf, 4])
    assert writes == [(0, 1, 8), (8, 4, 8), (16, 7, 8), (24, 10, 8)]
    pyqbdi.freeMemory(buf)


def test_mem_access_cb_and_bb_accesses(vm, guest):
    s = addr(guest, "smoke_sum")
    vm.addInstrumentedModuleFromAddr(s)
    buf = pyqbdi.allocateMemory(8 * 3)
    for i, v in enumerate([5, 6, 7]):
        pyqbdi.writeRword(buf + 8 * i, v)
    reads, bb = [], []
    vm.addMemAccessCB(pyqbdi.MEMORY_READ,
                      lambda v, g, fp, d: reads.extend(m.value for m in v.getInstMemoryAccess()
                                                       if m.type & pyqbdi.MEMORY_READ) or pyqbdi.CONTINUE,
                      None)
    vm.addVMEventCB(pyqbdi.SEQUENCE_EXIT,
                    lambda v, st, g, fp, d: bb.extend(v.getBBMemoryAccess()) or pyqbdi.CONTINUE, None)
    assert vm.call(s, [buf, 3]) == (True, 18)
    assert [5, 6, 7] == [r for r in reads if r in (5, 6, 7)]
    assert any(m.accessAddress == buf + 16 and m.value == 7 for m in bb)
    pyqbdi.freeMemory(buf)


def test_mem_addr_and_range_cb(vm, guest):
    fill = addr(guest, "smoke_fill")
    vm.addInstrumentedModuleFromAddr(fill)
    buf = pyqbdi.allocateMemory(8 * 4)
    hit_addr, hit_range = [], []
    vm.addMemAddrCB(buf + 8, pyqbdi.MEMORY_WRITE, lambda v, g, fp, d: hit_addr.append(d) or pyqbdi.CONTINUE, "a")
    vm.addMemRangeCB(buf + 16, buf + 32, pyqbdi.MEMORY_WRITE,
                     lambda v, g, fp, d: hit_range.append(d) or pyqbdi.CONTINUE, "r")
    vm.call(fill, [buf, 4])
    assert hit_addr == ["a"] and hit_range == ["r", "r"]
    pyqbdi.freeMemory(buf)
