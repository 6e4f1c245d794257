#!/usr/bin/env python3
# PyQBDI's documentation: load a library, instrument it and call its `foo`
# (the library's path is the first argument).

import ctypes
import sys
import pyqbdi

# load the library
mylib = ctypes.cdll.LoadLibrary(sys.argv[1])
funcPtr = ctypes.cast(mylib.foo, ctypes.c_void_p).value

# create VM
vm = pyqbdi.VM()
state = vm.getGPRState()
stack = pyqbdi.allocateVirtualStack(state, 0x1000000)
vm.addInstrumentedModuleFromAddr(funcPtr)

# call the function
asrun, retval = vm.call(funcPtr, [42])
assert asrun
print("foo(42) = {}".format(retval & 0xffffffff))
print("native foo(42) = {}".format(mylib.foo(42) & 0xffffffff))

pyqbdi.alignedFree(stack)
