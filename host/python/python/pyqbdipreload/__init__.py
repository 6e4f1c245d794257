"""`python -m pyqbdipreload TOOL.py PROGRAM [--] [ARGS...]`: runs PROGRAM from its main under
the qbdi-rs engine with the PyQBDI tool TOOL.py, whose `pyqbdipreload_on_run(vm, start,
stop)` is called at main (as PyQBDI's pyqbdipreload does).

The program is executed with `LD_PRELOAD` = libpython, then pyqbdi's native module, which
is also a whole `qbdi run` preload (see host/python/src/preload.rs): its stdio, exit status
and signals stay its own. `qbdi run -p TOOL.py -p drcov -- PROGRAM` does the same with Rust
plugins beside the tool (it asks `python -m pyqbdipreload --host-info` where things are).
"""

import argparse
import os
import sys
import sysconfig


def preload_library():
    """The native module of pyqbdi (the preload library)."""
    from pyqbdi import _pyqbdi
    return os.path.abspath(_pyqbdi.__file__)


def libpython():
    """The shared libpython this interpreter runs on."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    for name in (sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY")):
        if name and name.endswith(tuple([".so"] + [".so.%d" % i for i in range(3)] + [".so.1.0"])):
            path = os.path.join(libdir, name)
            if os.path.isfile(path):
                return path
    from ctypes import util
    name = util.find_library("python%d.%d" % sys.version_info[:2])
    if name:
        return name
    sys.exit("pyqbdipreload needs a shared libpython%d.%d (this Python is statically linked)"
             % sys.version_info[:2])


def host_info():
    """What `qbdi run` needs to run Python tools, one `key=value` a line."""
    print("preload=" + preload_library())
    print("libpython=" + libpython())
    print("home=" + sys.base_prefix)
    for p in sys.path:
        print("path=" + p)


def find_binary(binary):
    if "/" in binary:
        return binary
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, binary)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    sys.exit("Cannot find binary {} make sure its in your PATH env".format(binary))


def run(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--host-info"]:
        host_info()
        return
    parser = argparse.ArgumentParser(prog="python -m pyqbdipreload")
    parser.add_argument("script", type=str, help="PyQBDI script")
    parser.add_argument("target", type=str, help="command to instrument")
    parser.add_argument("args", type=str, help="command arguments", nargs="*")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.script):
        sys.exit("Cannot find {} script".format(args.script))
    import pyqbdi._pyqbdi as native
    binary = find_binary(args.target)
    preload = preload_library()
    env = os.environ.copy()
    user_preload = env.get("LD_PRELOAD")
    env["LD_PRELOAD"] = os.pathsep.join([libpython(), preload] + ([user_preload] if user_preload else []))
    env[native._config_var()] = native._preload_config(
        [os.path.abspath(args.script)], preload, [os.path.abspath(p) if p else p for p in sys.path],
        sys.base_prefix, user_preload)
    os.execve(binary, [args.target] + args.args, env)
