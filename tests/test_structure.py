"""The package's shape: what a module may assume when it is merely imported."""
from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: the modules this test process imported would not be imported
# again, and fresh copies of them must not mix with the ones the other tests use.
IMPORT_ALL_ON = """
import importlib, os, pkgutil, sys
real = os.uname()
os.uname = lambda: os.uname_result((real.sysname, real.nodename, real.release,
                                    real.version, sys.argv[1]))
import minicontainer
names = [m.name for m in pkgutil.walk_packages(minicontainer.__path__, "minicontainer.")
         if not m.name.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
print(" ".join(names))
"""


def test_every_module_imports_on_a_cpu_the_course_does_not_know():
    # CPU facts (system call numbers, QEMU's name, machine types) are looked up when
    # used, in host.py, never at import time: importing must work on any machine.
    imported = subprocess.run([sys.executable, "-c", IMPORT_ALL_ON, "riscv128"],
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    names = imported.stdout.split()
    assert {"minicontainer.host", "minicontainer.vm.machine", "minicontainer.vm.qemu"} <= set(
        names), "every module is walked, the subpackages' too"
