"""Skeleton package: importable, versioned, and independent of the apps layer."""

import subprocess
import sys

import dfm_gan


def test_package_imports_with_a_version():
    assert dfm_gan.__version__ == "0.3.0"


def test_library_does_not_import_the_cli_layer():
    # Dependencies point one way: core <- gan <- apps. Importing the library must not pull in apps or submitit.
    code = "import sys, dfm_gan; print(any(m.startswith(('dfm_apps', 'submitit')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
