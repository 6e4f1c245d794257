"""Whole-program mode: `python -m pyqbdipreload TOOL.py PROGRAM -- ARGS` (drcov coverage of
`seq` from its main with a 40-line PyQBDI tool), and Python tools beside Rust plugins in
`qbdi run -p tool.py -p drcov`."""

import os
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, HERE

SEQ = shutil.which("seq")
TOOL = os.path.join(HERE, "tools", "drcov.py")


def parse_drcov(path):
    data = open(path, "rb").read()
    head, _, table = data.partition(b"BB Table: ")
    count, _, records = table.partition(b" bbs\n")
    mods = []
    for line in head.decode().splitlines():
        parts = line.split(", ")
        if len(parts) == 5 and parts[0].isdigit():
            mods.append((int(parts[1], 16), int(parts[2], 16), parts[4]))
    bbs = [struct.unpack_from("<IHH", records, i) for i in range(0, len(records), 8)]
    assert len(bbs) == int(count)
    return mods, bbs


def test_drcov_of_seq_from_main(tmp_path):
    out = tmp_path / "seq.drcov"
    env = dict(os.environ, DRCOV_OUT=str(out))
    p = subprocess.run([sys.executable, "-m", "pyqbdipreload", TOOL, SEQ, "--", "-w", "1", "10"],
                       capture_output=True, text=True, env=env, timeout=120)
    native = subprocess.run([SEQ, "-w", "1", "10"], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (native.returncode, native.stdout), p.stderr
    mods, bbs = parse_drcov(out)
    seq_ids = [i for i, m in enumerate(mods) if os.path.realpath(m[2]) == os.path.realpath(SEQ)]
    assert seq_ids and len([b for b in bbs if b[2] == seq_ids[0]]) > 20
    assert all(mods[m][0] + off < mods[m][1] and size > 0 for off, size, m in bbs)


def test_program_exit_status_and_environment_stay_its_own(tmp_path):
    env = dict(os.environ, DRCOV_OUT=str(tmp_path / "x.drcov"))
    p = subprocess.run([sys.executable, "-m", "pyqbdipreload", TOOL, SEQ, "--", "x"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "invalid floating point argument" in p.stderr
    env_tool = tmp_path / "env.py"
    env_tool.write_text("def pyqbdipreload_on_run(vm, start, stop):\n    vm.run(start, stop)\n")
    p = subprocess.run([sys.executable, "-m", "pyqbdipreload", str(env_tool), shutil.which("env")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    assert "QBDI_RUN_CONFIG" not in p.stdout and "LD_PRELOAD" not in p.stdout


def test_python_tool_beside_rust_plugins(tmp_path):
    qbdi = os.path.join(ROOT, "target", "debug", "qbdi")
    if not os.path.exists(qbdi):
        pytest.skip("the workspace is not built (cargo build --workspace)")
    tool = tmp_path / "count.py"
    tool.write_text(
        "import atexit, pyqbdi\n"
        "n = [0]\n"
        "def on_bb(vm, st, gpr, fpr, data):\n"
        "    n[0] += 1\n"
        "    return pyqbdi.CONTINUE\n"
        "def qbdi_init(vm):\n"
        "    assert pyqbdi.__preload__\n"
        "    vm.addVMEventCB(pyqbdi.BASIC_BLOCK_ENTRY, on_bb, None)\n"
        "    atexit.register(lambda: print('blocks:', n[0], flush=True))\n")
    cov = tmp_path / "plugin.drcov"
    env = dict(os.environ, QBDI_PYTHON=sys.executable)
    p = subprocess.run([qbdi, "run", "-p", str(tool), "-p", "drcov:out=%s" % cov, "--", SEQ, "3"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [l for l in lines if not l.startswith("blocks:")] == ["1", "2", "3"]
    blocks = int([l for l in lines if l.startswith("blocks:")][0].split()[1])
    mods, bbs = parse_drcov(cov)
    assert blocks >= len(bbs) > 10
