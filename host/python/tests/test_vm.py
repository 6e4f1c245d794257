"""The VM: construction, options, states, ranges, run and call, cache, errno."""

import copy
import pickle

import pyqbdi
from conftest import addr


def test_constructor_takes_cpu_mattrs_and_options():
    v = pyqbdi.VM("", [], pyqbdi.OPT_DISABLE_OPTIONAL_FPR)
    assert v.options == pyqbdi.OPT_DISABLE_OPTIONAL_FPR
    assert v.getOptions() == pyqbdi.OPT_DISABLE_OPTIONAL_FPR
    v.options = pyqbdi.NO_OPT
    v.setOptions(pyqbdi.OPT_ATT_SYNTAX | pyqbdi.OPT_DISABLE_ERRNO_BACKUP)
    assert int(v.options) == (1 << 24) | 8
    assert pyqbdi.VM(options=pyqbdi.OPT_DISABLE_FPR).options == pyqbdi.OPT_DISABLE_FPR


def test_call_runs_a_guest_function(vm, guest):
    loop = addr(guest, "smoke_loop")
    assert vm.call(loop, [100]) == (False, 0)  # not instrumented yet
    assert vm.addInstrumentedModuleFromAddr(loop)
    ok, ret = vm.call(loop, [100])
    assert ok and ret == guest.smoke_loop(100)


def test_run_from_a_simulated_call(vm, guest):
    f = addr(guest, "ev_bb_branch")
    vm.addInstrumentedModuleFromAddr(f)
    state = vm.getGPRState()
    pyqbdi.simulateCall(state, 0x42424242, [0])
    assert vm.run(f, 0x42424242)
    assert state.rax == 1 and state.rip == 0x42424242
    assert vm.run(0x1000, 0x2000) is False


def test_ranges_and_modules(vm, guest, guest_path):
    f = addr(guest, "ev_bb_loop")
    end = addr(guest, "ev_bb_loop_end")
    assert vm.addInstrumentedModule("libnothing.so") is False
    vm.addInstrumentedRange(f, end)
    assert vm.call(f, [5])[0]
    vm.removeInstrumentedRange(f, end)
    assert vm.call(f, [5]) == (False, 0)
    assert vm.addInstrumentedModule("libguest.so")
    assert vm.call(f, [5])[0]
    assert vm.removeInstrumentedModule("libguest.so")
    assert vm.addInstrumentedModule(guest_path)
    assert vm.removeInstrumentedModuleFromAddr(f)
    assert vm.call(f, [5]) == (False, 0)
    assert vm.addInstrumentedModuleFromAddr(f)
    vm.removeAllInstrumentedRanges()
    assert vm.call(f, [5]) == (False, 0)


def test_instrument_all_executable_maps_runs_libc_too(vm, guest):
    f = addr(guest, "ev_libc_roundtrip")
    buf = pyqbdi.allocateMemory(8)
    pyqbdi.writeMemory(buf, b"abcdef\0")
    expected = guest.ev_libc_roundtrip(b"abcdef", 6)
    assert vm.instrumentAllExecutableMaps()
    assert vm.call(f, [buf, 6]) == (True, expected)
    vm.removeAllInstrumentedRanges()
    vm.addInstrumentedModuleFromAddr(f)
    assert vm.call(f, [buf, 6]) == (True, expected)
    pyqbdi.freeMemory(buf)


def test_gpr_state_is_live_and_copies_are_not(vm):
    s = vm.getGPRState()
    s.rax = 5
    assert vm.getGPRState().rax == 5 and s[0] == 5
    s[pyqbdi.REG_PC] = 0x1234
    assert s.rip == 0x1234
    c = copy.copy(s)
    c.rax = 6
    assert s.rax == 5 and c.rax == 6
    vm.setGPRState(c)
    assert s.rax == 6
    p = pickle.loads(pickle.dumps(s))
    assert p.rsp == s.rsp and p.rip == 0x1234
    assert "rax" in str(s)
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rbp", "rsp", "rip", "eflags", "fs", "gs"]
    fresh = pyqbdi.GPRState()
    for i, n in enumerate(names):
        setattr(fresh, n, i + 1)
        assert fresh[i] == i + 1
    try:
        fresh[20]
        raise AssertionError("index 20 exists")
    except IndexError:
        pass


def test_fpr_state_fields_are_bytes(vm):
    f = vm.getFPRState()
    assert f.rfcw == 0x37F and f.mxcsr == 0x1F80 and f.fcw.pc == 3
    f.xmm3 = bytes(range(16))
    assert vm.getFPRState().xmm3 == bytes(range(16))
    f.xmm4 = b"\x01" * 15  # shorter: copies what is given
    assert f.xmm4 == b"\x01" * 15 + b"\0"
    f.ymm2 = b"\x02" * 16
    assert f.zmm2[:16] == b"\0" * 16 and f.zmm2[16:32] == b"\x02" * 16
    f.zmm20 = b"\x05" * 64
    assert f.zmm20 == b"\x05" * 64
    f.k3 = 0xFF00
    assert f.k3 == 0xFF00
    assert len(f.stmm0.st) == 10
    own = pyqbdi.FPRState()
    own.xmm0 = b"\x07" * 16
    vm.setFPRState(own)
    assert f.xmm0 == b"\x07" * 16


def test_call_passes_doubles_in_xmm(vm):
    import ctypes
    libm = ctypes.CDLL("libm.so.6")
    sqrt = ctypes.cast(libm.sqrt, ctypes.c_void_p).value
    vm.addInstrumentedModuleFromAddr(sqrt)
    f = vm.getFPRState()
    f.xmm0 = pyqbdi.encodeDoubleU(2.0).to_bytes(8, "little") + bytes(8)
    assert vm.call(sqrt, [])[0]
    assert pyqbdi.decodeDoubleU(int.from_bytes(f.xmm0[:8], "little")) == 2.0 ** 0.5


def test_precache_and_clear_cache(vm, guest):
    f = addr(guest, "ev_bb_loop")
    vm.addInstrumentedModuleFromAddr(f)
    assert vm.precacheBasicBlock(f) is True
    assert vm.precacheBasicBlock(f) is False
    vm.clearCache(f, f + 1)
    assert vm.precacheBasicBlock(f) is True
    vm.clearAllCache()
    assert vm.precacheBasicBlock(f) is True
    assert vm.getNbExecBlock() >= 1
    vm.reduceCacheTo(0)


def test_errno_is_the_guests(vm, guest):
    f = addr(guest, "ev_bb_branch")
    vm.addInstrumentedModuleFromAddr(f)
    vm.setErrno(42)
    vm.call(f, [0])
    assert vm.getErrno() == 42


def test_vm_is_not_reentrant_from_callbacks(vm, guest):
    f = addr(guest, "ev_bb_branch")
    vm.addInstrumentedModuleFromAddr(f)
    errors = []

    def cb(v, gpr, fpr, data):
        for call in (lambda: v.run(f, 0), lambda: v.call(f, []), lambda: v.setOptions(0),
                     lambda: v.precacheBasicBlock(f)):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))
        return pyqbdi.STOP

    vm.addCodeCB(pyqbdi.PREINST, cb, None)
    vm.call(f, [0])
    assert len(errors) == 4 and "re-entrant" in errors[0]
