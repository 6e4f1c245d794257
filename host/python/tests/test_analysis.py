"""InstAnalysis and OperandAnalysis, in callbacks and from the cache."""

import pyqbdi
from conftest import addr


def test_inst_analysis_in_callbacks(vm, guest):
    f = addr(guest, "ev_bb_branch")
    vm.addInstrumentedModuleFromAddr(f)
    got = []

    def cb(v, g, fp, d):
        got.append(v.getInstAnalysis())
        return pyqbdi.CONTINUE

    vm.addCodeCB(pyqbdi.PREINST, cb, None)
    vm.call(f, [1])
    first = got[0]
    assert first.address == f and first.mnemonic == "CMP" and first.isCompare
    assert first.disassembly == "cmp rdi,0" and first.instSize == 4
    assert first.operands is None and first.symbolName is None
    jne = got[1]
    assert jne.isBranch and jne.affectControlFlow and jne.condition == pyqbdi.CONDITION_NOT_EQUALS
    assert got[-1].isReturn


def test_cached_analysis_with_operands_and_symbols(vm, guest):
    f = addr(guest, "ev_bb_loop_odd")
    vm.addInstrumentedModuleFromAddr(f)
    assert vm.getCachedInstAnalysis(0x10) is None
    a = vm.getCachedInstAnalysis(f, pyqbdi.ANALYSIS_INSTRUCTION | pyqbdi.ANALYSIS_DISASSEMBLY
                                 | pyqbdi.ANALYSIS_OPERANDS | pyqbdi.ANALYSIS_SYMBOL)
    assert a.mnemonic == "ADD" and a.disassembly == "add rax,rdi"
    assert a.numOperands == len(a.operands) >= 2
    dst, src = a.operands[0], a.operands[1]
    assert dst.type == pyqbdi.OPERAND_GPR and dst.regName == "RAX" and dst.regCtxIdx == 0
    assert dst.regAccess == pyqbdi.REGISTER_READ_WRITE and src.regAccess == pyqbdi.REGISTER_READ
    assert src.regName == "RDI" and src.size == 8
    assert a.flagsAccess == pyqbdi.REGISTER_WRITE
    assert a.symbolName == a.symbol == "ev_bb_loop_odd" or a.symbolName.startswith("ev_bb_loop")
    assert a.moduleName == a.module == "libguest.so"


def test_att_syntax_option(guest):
    v = pyqbdi.VM(options=pyqbdi.OPT_ATT_SYNTAX)
    f = addr(guest, "ev_bb_loop_odd")
    v.addInstrumentedModuleFromAddr(f)
    assert "%rdi" in v.getCachedInstAnalysis(f).disassembly
