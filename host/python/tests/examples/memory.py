#!/usr/bin/env python3
# PyQBDI's documentation: the memory helpers.

import pyqbdi

value = b"Hello world"
addr = pyqbdi.allocateMemory(len(value))
pyqbdi.writeMemory(addr, value)
print(pyqbdi.readMemory(addr, len(value)))
pyqbdi.freeMemory(addr)

rword = pyqbdi.allocateRword()
pyqbdi.writeRword(rword, 0x1234)
print(hex(pyqbdi.readRword(rword)))
pyqbdi.freeMemory(rword)

print(pyqbdi.decodeFloat(pyqbdi.encodeFloat(1.5)), pyqbdi.decodeDouble(pyqbdi.encodeDouble(-2.25)))
