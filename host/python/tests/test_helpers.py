"""The free functions and the enums."""

import struct

import pyqbdi


def test_memory_helpers():
    p = pyqbdi.allocateMemory(32)
    pyqbdi.writeMemory(p, b"hello world")
    assert pyqbdi.readMemory(p, 5) == b"hello"
    pyqbdi.writeRword(p + 16, 0x1122334455667788)
    assert pyqbdi.readRword(p + 16) == 0x1122334455667788
    assert pyqbdi.readMemory(p + 16, 1) == b"\x88"
    pyqbdi.freeMemory(p)
    r = pyqbdi.allocateRword()
    pyqbdi.writeRword(r, 5)
    assert pyqbdi.readRword(r) == 5
    pyqbdi.freeMemory(r)
    a = pyqbdi.alignedAlloc(100, 4096)
    assert a % 4096 == 0
    pyqbdi.alignedFree(a)


def test_virtual_stack_and_simulate_call():
    s = pyqbdi.GPRState()
    base = pyqbdi.allocateVirtualStack(s, 0x10000)
    assert s.rsp == s.rbp and base < s.rsp <= base + 0x10000 and s.rsp % 16 == 0
    pyqbdi.simulateCall(s, 0x42, [1, 2, 3, 4, 5, 6, 7, 8])
    assert (s.rdi, s.rsi, s.rdx, s.rcx, s.r8, s.r9) == (1, 2, 3, 4, 5, 6)
    assert pyqbdi.readRword(s.rsp) == 0x42
    assert pyqbdi.readRword(s.rsp + 8) == 7 and pyqbdi.readRword(s.rsp + 16) == 8
    pyqbdi.alignedFree(base)


def test_float_encoding_matches_struct():
    assert pyqbdi.encodeFloat(1.0) == struct.unpack("<i", struct.pack("<f", 1.0))[0]
    assert pyqbdi.encodeFloat(-1.0) == -1082130432
    assert pyqbdi.encodeFloatU(-1.0) == 3212836864
    assert pyqbdi.decodeFloat(1065353216) == 1.0
    assert pyqbdi.decodeFloatU(3212836864) == -1.0
    assert pyqbdi.encodeDouble(1.0) == 4607182418800017408
    assert pyqbdi.encodeDoubleU(-1.0) == 13830554455654793216
    assert pyqbdi.decodeDouble(pyqbdi.encodeDouble(-2.5)) == -2.5
    assert pyqbdi.decodeDoubleU(pyqbdi.encodeDoubleU(3.25)) == 3.25


def test_maps_and_modules():
    maps = pyqbdi.getCurrentProcessMaps()
    assert any(m.permission & pyqbdi.PF_EXEC for m in maps)
    libc = [m for m in maps if m.name.startswith("libc.so")]
    assert libc and all(isinstance(m.range, pyqbdi.Range) for m in libc)
    full = pyqbdi.getCurrentProcessMaps(True)
    assert any(m.name.startswith("/") and "libc.so" in m.name for m in full)
    import os
    assert len(pyqbdi.getRemoteProcessMaps(os.getpid())) > 0
    names = pyqbdi.getModuleNames()
    assert names == sorted(set(names)) and any(n.startswith("libc.so") for n in names)


def test_range():
    r = pyqbdi.Range(0x10, 0x20)
    assert r.size() == 0x10 and 0x15 in r and 0x20 not in r
    assert r.contains(pyqbdi.Range(0x12, 0x14)) and r.overlaps(pyqbdi.Range(0x1F, 0x30))
    i = r.intersect(pyqbdi.Range(0x18, 0x30))
    assert (i.start, i.end) == (0x18, 0x20) and (r[0], r[1]) == (0x10, 0x20)


def test_enums_behave_like_pyqbdis():
    assert pyqbdi.CONTINUE == pyqbdi.VMAction.CONTINUE == 0 and int(pyqbdi.STOP) == 4
    e = pyqbdi.BASIC_BLOCK_ENTRY | pyqbdi.BASIC_BLOCK_EXIT
    assert isinstance(e, pyqbdi.VMEvent) and int(e) == 12
    assert str(e) == "VMEvent.BASIC_BLOCK_ENTRY|BASIC_BLOCK_EXIT"
    assert repr(pyqbdi.PREINST) == "<InstPosition.PREINST: 0>"
    assert pyqbdi.ANALYSIS_OPERANDS.name == "ANALYSIS_OPERANDS"
    assert pyqbdi.PRIORITY_MEMACCESS_LIMIT == 0x1000000 and pyqbdi.PF_READ | pyqbdi.PF_EXEC == 5
    assert {pyqbdi.MEMORY_READ: 1}[pyqbdi.MEMORY_READ] == 1
    assert pyqbdi.__arch__ == "X86_64" and pyqbdi.__platform__ == "linux"
    assert pyqbdi.__version__.startswith("0.12") and pyqbdi.__preload__ is False
    assert pyqbdi.GPRState.REG_SP == pyqbdi.REG_SP == 15 and pyqbdi.REG_LR is None
