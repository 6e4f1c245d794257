#!/usr/bin/env python3
# PyQBDI's documentation snippets on basic blocks: BASIC_BLOCK_ENTRY (blocks as they run),
# BASIC_BLOCK_NEW (coverage), BASIC_BLOCK_EXIT + BASIC_BLOCK_ENTRY (edge coverage), and
# EXEC_TRANSFER_CALL / EXEC_TRANSFER_RETURN, on `foo` of the library in argv[1].

import ctypes
import sys
import pyqbdi

mylib = ctypes.cdll.LoadLibrary(sys.argv[1])
funcPtr = ctypes.cast(getattr(mylib, sys.argv[2]), ctypes.c_void_p).value


def vmcbk(vm, evt, gpr, fpr, data):
    print("start:0x{:x}, end:0x{:x}".format(evt.basicBlockStart, evt.basicBlockEnd))
    return pyqbdi.CONTINUE


def cvcbk(vm, evt, gpr, fpr, data):
    data[evt.basicBlockStart] = evt.basicBlockEnd
    return pyqbdi.CONTINUE


def edge_exit(vm, evt, gpr, fpr, data):
    data["last"] = evt.basicBlockStart
    return pyqbdi.CONTINUE


def edge_entry(vm, evt, gpr, fpr, data):
    if data["last"] is not None:
        data["edges"].add((data["last"], evt.basicBlockStart))
    return pyqbdi.CONTINUE


def transfer(vm, evt, gpr, fpr, data):
    data.append((evt.event, gpr.rip))
    return pyqbdi.CONTINUE


vm = pyqbdi.VM()
state = vm.getGPRState()
stack = pyqbdi.allocateVirtualStack(state, 0x100000)
vm.addInstrumentedModuleFromAddr(funcPtr)

vm.addVMEventCB(pyqbdi.BASIC_BLOCK_ENTRY, vmcbk, None)
coverage = {}
vm.addVMEventCB(pyqbdi.BASIC_BLOCK_NEW, cvcbk, coverage)
edges = {"last": None, "edges": set()}
vm.addVMEventCB(pyqbdi.BASIC_BLOCK_EXIT, edge_exit, edges)
vm.addVMEventCB(pyqbdi.BASIC_BLOCK_ENTRY, edge_entry, edges)
transfers = []
vm.addVMEventCB(pyqbdi.EXEC_TRANSFER_CALL | pyqbdi.EXEC_TRANSFER_RETURN, transfer, transfers)

asrun, retval = vm.call(funcPtr, [10])
print("result {}".format(retval & 0xffffffff))
print("coverage {}".format(len(coverage)))
for start, end in sorted(coverage.items()):
    print("  block 0x{:x} size {}".format(start, end - start))
print("edges {}".format(len(edges["edges"])))
print("transfers {}".format(len(transfers)))
for evt, rip in transfers:
    print("  {} 0x{:x}".format(evt, rip))
pyqbdi.alignedFree(stack)
