"""Fixtures of the pyqbdi tests: the guest code of the Rust tests (tests/guest/*), built
into a shared library the tests load with ctypes, and a small `foo` library for the
PyQBDI examples."""

import ctypes
import glob
import os
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
GUEST = os.path.join(ROOT, "tests", "guest")
HERE = os.path.dirname(os.path.abspath(__file__))


def _cc(out, sources, extra=()):
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fno-strict-aliasing", "-Wno-unused-parameter",
           "-Wl,-z,noexecstack", "-o", out, *sources, *extra]
    subprocess.run(cmd, check=True)
    return out


@pytest.fixture(scope="session")
def guest_path(tmp_path_factory):
    """libguest.so: every tests/guest/*.c and *.S (the Rust tests' guest functions)."""
    d = tmp_path_factory.mktemp("guest")
    sources = sorted(glob.glob(os.path.join(GUEST, "*.c")) + glob.glob(os.path.join(GUEST, "*.S")))
    return _cc(str(d / "libguest.so"), sources, ["-lm", "-lpthread"])


@pytest.fixture(scope="session")
def guest(guest_path):
    lib = ctypes.CDLL(guest_path)
    for name in ("smoke_loop", "smoke_fib", "smoke_libc", "ev_libc_roundtrip", "ev_bb_loop"):
        getattr(lib, name).restype = ctypes.c_long
    return lib


@pytest.fixture(scope="session")
def foo_lib(tmp_path_factory):
    """libfoo.so with `foo`, as in PyQBDI's documentation."""
    d = tmp_path_factory.mktemp("foo")
    src = d / "foo.c"
    src.write_text("int foo(int x) { int s = 0; for (int i = 0; i < x; i++) s += i % 7 ? i : -i; return s; }\n"
                   "int bar(int x) { return foo(x) + 1; }\n")
    return _cc(str(d / "libfoo.so"), [str(src)])


def addr(lib, name):
    """The address of a function or label of a ctypes library."""
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


@pytest.fixture
def vm():
    """A VM with a 1 MiB stack; the stack is freed after the test."""
    import pyqbdi
    v = pyqbdi.VM()
    stack = pyqbdi.allocateVirtualStack(v.getGPRState(), 0x100000)
    yield v
    pyqbdi.alignedFree(stack)
