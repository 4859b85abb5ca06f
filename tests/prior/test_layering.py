"""prior is a library: it never imports the simulator, the renderer or the CLI (DESIGN.md section 1)."""

import subprocess
import sys


def test_prior_imports_no_sibling_package():
    code = (
        "import sys, pkgutil, importlib, dreamcloth.prior as p\n"
        "for m in pkgutil.iter_modules(p.__path__): importlib.import_module('dreamcloth.prior.' + m.name)\n"
        "bad = sorted(k for k in sys.modules if k.startswith(('dreamcloth.render', 'dreamcloth.cli', 'dreamcloth.taichi_mpm')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
