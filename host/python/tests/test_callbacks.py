"""Every callback kind, its `data` argument, its id, and the VMActions."""

import pyqbdi
from conftest import addr

# ev_bb_loop's blocks (tests/guest/ev_blocks.S): H T O V N D.
LABELS = ["ev_bb_loop", "ev_bb_loop_top", "ev_bb_loop_odd", "ev_bb_loop_even",
          "ev_bb_loop_next", "ev_bb_loop_done", "ev_bb_loop_end"]


def setup(vm, guest, name="ev_bb_loop"):
    f = addr(guest, name)
    vm.addInstrumentedModuleFromAddr(f)
    return f


def test_code_cb_sees_every_instruction_with_data(vm, guest):
    f = setup(vm, guest)
    seen = []

    def cb(v, gpr, fpr, data):
        assert v is vm
        seen.append((gpr.rip, data))
        return pyqbdi.CONTINUE

    i = vm.addCodeCB(pyqbdi.PREINST, cb, "d")
    assert isinstance(i, int) and i != pyqbdi.INVALID_EVENTID
    assert vm.call(f, [3]) == (True, 3 - 1 + 1)  # 3 odd: +3, 2 even: -1, 1 odd: +1
    assert seen[0] == (f, "d") and all(d == "d" for _, d in seen)
    n = len(seen)
    vm.deleteInstrumentation(i)
    vm.call(f, [3])
    assert len(seen) == n


def test_postinst_sees_the_next_rip(vm, guest):
    f = setup(vm, guest, "ev_bb_branch")
    rips = []
    vm.addCodeCB(pyqbdi.POSTINST, lambda v, g, fp, d: rips.append(g.rip) or pyqbdi.CONTINUE, None)
    vm.call(f, [1])
    assert rips[1] == addr(guest, "ev_bb_branch_c")


def test_code_addr_and_range_cb(vm, guest):
    f = setup(vm, guest)
    odd, even = addr(guest, "ev_bb_loop_odd"), addr(guest, "ev_bb_loop_even")
    hits = []
    vm.addCodeAddrCB(odd, pyqbdi.PREINST, lambda v, g, fp, d: hits.append(d) or pyqbdi.CONTINUE, "odd")
    vm.addCodeRangeCB(even, addr(guest, "ev_bb_loop_done"), pyqbdi.PREINST,
                      lambda v, g, fp, d: hits.append(d) or pyqbdi.CONTINUE, "even", pyqbdi.PRIORITY_DEFAULT)
    vm.call(f, [4])
    assert hits.count("odd") == 2
    assert hits.count("even") == 2 * 3 + 2 * 2  # V (3 insts) twice, N (2 insts) from O twice


def test_mnemonic_cb_and_priorities(vm, guest):
    f = setup(vm, guest, "smoke_libc")
    order = []
    vm.addMnemonicCB("CALL*", pyqbdi.PREINST, lambda v, g, fp, d: order.append(d) or pyqbdi.CONTINUE, "low", -1)
    vm.addMnemonicCB("call", pyqbdi.PREINST, lambda v, g, fp, d: order.append(d) or pyqbdi.CONTINUE, "high", 10)
    vm.call(f, [2])
    assert order and order[:2] == ["high", "low"]
    bad = vm.addMnemonicCB("NOTAMNEMONIC", pyqbdi.PREINST, lambda *a: pyqbdi.CONTINUE, None)
    assert bad == pyqbdi.INVALID_EVENTID


def test_vm_events_report_blocks(vm, guest):
    f = setup(vm, guest)
    blocks = {addr(guest, a): addr(guest, b) for a, b in zip(LABELS, LABELS[1:])}
    entries, new = [], []

    def on_entry(v, state, gpr, fpr, data):
        assert data == 7 and state.event & pyqbdi.BASIC_BLOCK_ENTRY
        entries.append((state.basicBlockStart, state.basicBlockEnd))
        return pyqbdi.CONTINUE

    vm.addVMEventCB(pyqbdi.BASIC_BLOCK_ENTRY, on_entry, 7)
    vm.addVMEventCB(pyqbdi.BASIC_BLOCK_NEW,
                    lambda v, s, g, fp, d: new.append(s.basicBlockStart) or pyqbdi.CONTINUE, None)
    vm.call(f, [2])
    assert entries[0] == (f, blocks[f])
    starts = [s for s, _ in entries]
    assert starts == [f, addr(guest, "ev_bb_loop_top"), addr(guest, "ev_bb_loop_even"),
                      addr(guest, "ev_bb_loop_top"), addr(guest, "ev_bb_loop_odd"),
                      addr(guest, "ev_bb_loop_next"), addr(guest, "ev_bb_loop_done")]
    assert sorted(set(new)) == sorted(set(starts))
    before = len(new)
    vm.call(f, [2])
    assert len(new) == before  # cached blocks are not new again


def test_exec_transfer_events(vm, guest):
    f = setup(vm, guest, "ev_libc_roundtrip")
    calls, rets = [], []
    vm.addVMEventCB(pyqbdi.EXEC_TRANSFER_CALL, lambda v, s, g, fp, d: calls.append(g.rip) or pyqbdi.CONTINUE, None)
    vm.addVMEventCB(pyqbdi.EXEC_TRANSFER_RETURN, lambda v, s, g, fp, d: rets.append(g.rip) or pyqbdi.CONTINUE, None)
    buf = pyqbdi.allocateMemory(8)
    pyqbdi.writeMemory(buf, b"hello\0")
    assert vm.call(f, [buf, 5])[0]
    pyqbdi.freeMemory(buf)
    assert len(calls) >= 3 and len(calls) == len(rets)


def test_skip_inst_and_changing_registers(vm, guest):
    f = setup(vm, guest, "ev_bb_branch")
    mov = addr(guest, "ev_bb_branch_b")

    def skip(v, gpr, fpr, data):
        gpr.rax = 99
        return pyqbdi.SKIP_INST

    vm.addCodeAddrCB(mov, pyqbdi.PREINST, skip, None)
    assert vm.call(f, [0]) == (True, 99)


def test_break_to_vm_with_a_new_rip(vm, guest):
    f = setup(vm, guest, "ev_bb_branch")

    def redirect(v, gpr, fpr, data):
        gpr.rip = addr(guest, "ev_bb_branch_c")
        return pyqbdi.BREAK_TO_VM

    vm.addCodeAddrCB(addr(guest, "ev_bb_branch_b"), pyqbdi.PREINST, redirect, None)
    assert vm.call(f, [0]) == (True, 2)


def test_stop_ends_the_run(vm, guest):
    f = setup(vm, guest)
    vm.addCodeAddrCB(addr(guest, "ev_bb_loop_top"), pyqbdi.PREINST, lambda *a: pyqbdi.STOP, None)
    pyqbdi.simulateCall(vm.getGPRState(), 0x42, [3])
    assert vm.run(f, 0x42) is True
    assert vm.getGPRState().rip == addr(guest, "ev_bb_loop_top")


def test_callback_exception_is_raised_by_call(vm, guest):
    f = setup(vm, guest)

    def boom(v, g, fp, d):
        raise ValueError("boom")

    vm.addCodeCB(pyqbdi.PREINST, boom, None)
    try:
        vm.call(f, [1])
        raise AssertionError("no exception")
    except ValueError as e:
        assert str(e) == "boom"
    vm.deleteAllInstrumentations()
    assert vm.call(f, [1]) == (True, 1)


def test_instr_rules(vm, guest):
    f = setup(vm, guest, "smoke_libc")
    calls = []

    def rule(v, ana, data):
        assert data == "r"
        if ana.isCall:
            return [pyqbdi.InstrRuleDataCBK(lambda v, g, fp, d: calls.append(d) or pyqbdi.CONTINUE,
                                            ana.address, pyqbdi.PREINST)]
        return []

    rid = vm.addInstrRule(rule, pyqbdi.ANALYSIS_INSTRUCTION, "r")
    vm.call(f, [2])
    assert calls and all(isinstance(c, int) for c in calls)
    vm.deleteInstrumentation(rid)
    n = len(calls)
    vm.call(f, [2])
    assert len(calls) == n
    ranged = []
    loop = addr(guest, "ev_bb_loop")
    vm.addInstrumentedModuleFromAddr(loop)
    vm.addInstrRuleRange(addr(guest, "ev_bb_loop_odd"), addr(guest, "ev_bb_loop_even"),
                         lambda v, ana, d: [pyqbdi.InstrRuleDataCBK(
                             lambda v, g, fp, d: ranged.append(d) or pyqbdi.CONTINUE, ana.mnemonic,
                             pyqbdi.POSTINST, 0)], pyqbdi.ANALYSIS_INSTRUCTION, None)
    vm.call(loop, [3])
    assert ranged == ["ADD", "JMP", "ADD", "JMP"]


def test_delete_all_instrumentations(vm, guest):
    f = setup(vm, guest)
    hits = []
    vm.addCodeCB(pyqbdi.PREINST, lambda *a: hits.append(1) or pyqbdi.CONTINUE, None)
    vm.addVMEventCB(pyqbdi.SEQUENCE_ENTRY, lambda *a: hits.append(2) or pyqbdi.CONTINUE, None)
    vm.deleteAllInstrumentations()
    vm.call(f, [3])
    assert hits == []


def test_callbacks_can_add_callbacks(vm, guest):
    f = setup(vm, guest)
    later = []

    def first(v, g, fp, d):
        # BREAK_TO_VM with rip unchanged runs this instruction's PREINST callbacks again
        # (as in QBDI): add once.
        if d["added"]:
            return pyqbdi.CONTINUE
        d["added"] = True
        v.addCodeAddrCB(addr(guest, "ev_bb_loop_done"), pyqbdi.PREINST,
                        lambda *a: later.append(1) or pyqbdi.CONTINUE, None)
        return pyqbdi.BREAK_TO_VM

    vm.addCodeAddrCB(f, pyqbdi.PREINST, first, {"added": False})
    vm.call(f, [2])
    assert later == [1]


def test_a_long_block_split_in_sequences_is_one_basic_block(vm, guest):
    """ev_long_block (tests/guest/ev_blocks.S) is one basic block of 1802 instructions and
    1201 memory accesses: with PreInst and PostInst callbacks on every instruction and memory
    recording, its host code takes several sequences. QBDI's semantics: BASIC_BLOCK_ENTRY,
    BASIC_BLOCK_EXIT and BASIC_BLOCK_NEW once, with the whole block; SEQUENCE_ENTRY/EXIT
    once per piece, the pieces tiling the block; every instruction seen once before and once
    after, with the accesses it made."""
    import ctypes
    f = setup(vm, guest, "ev_long_block")
    end = addr(guest, "ev_long_block_end")
    assert vm.recordMemoryAccess(pyqbdi.MEMORY_READ_WRITE)
    pre, post, accesses = [], [], [0]

    def on_post(v, g, fp, d):
        post.append(g.rip)
        accesses[0] += len(v.getInstMemoryAccess())
        return pyqbdi.CONTINUE

    vm.addCodeCB(pyqbdi.PREINST, lambda v, g, fp, d: pre.append(g.rip) or pyqbdi.CONTINUE, None)
    vm.addCodeCB(pyqbdi.POSTINST, on_post, None)
    events = []
    vm.addVMEventCB(pyqbdi.BASIC_BLOCK_ENTRY | pyqbdi.BASIC_BLOCK_EXIT | pyqbdi.SEQUENCE_ENTRY
                    | pyqbdi.SEQUENCE_EXIT | pyqbdi.BASIC_BLOCK_NEW,
                    lambda v, s, g, fp, d: events.append(
                        (s.event, s.basicBlockStart, s.basicBlockEnd, s.sequenceStart,
                         s.sequenceEnd)) or pyqbdi.CONTINUE, None)
    buf = (ctypes.c_uint64 * 1)(5)
    ok, ret = vm.call(f, [ctypes.addressof(buf)])
    assert ok and ret == 5 + 600 * 7 and buf[0] == ret
    assert len(pre) == len(post) == 1802 and pre[0] == f
    assert accesses[0] == 1201  # 600 loads, 600 stores and the ret's read of its address
    with_event = lambda e: [x for x in events if x[0] & e]
    for e in (pyqbdi.BASIC_BLOCK_ENTRY, pyqbdi.BASIC_BLOCK_EXIT, pyqbdi.BASIC_BLOCK_NEW):
        got = with_event(e)
        assert len(got) == 1 and got[0][1:3] == (f, end), (e, got)
    seqs = with_event(pyqbdi.SEQUENCE_ENTRY)
    assert len(seqs) > 1 and len(seqs) == len(with_event(pyqbdi.SEQUENCE_EXIT))
    at = f
    for _, bb_start, bb_end, s_start, s_end in seqs:
        assert (bb_start, bb_end, s_start) == (f, end, at)
        at = s_end
    assert at == end
