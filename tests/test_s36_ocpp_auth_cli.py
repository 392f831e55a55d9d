"""The documented password-hash command, ``python3 -m nowblock.ocpp.auth PASSWORD``, runs clean."""

import os
import subprocess
import sys
from pathlib import Path

import nowblock
from nowblock.ocpp import hash_password, verify_password

SRC = Path(nowblock.__file__).resolve().parents[1]  # the code under test, wherever it was imported from


def test_the_hash_command_prints_a_verifiable_hash_and_nothing_else(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "nowblock.ocpp.auth", "the AuthorizationKey of CP01"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 0
    assert r.stderr == ""  # runpy's RuntimeWarning: the package had imported the module before running it
    out = r.stdout.strip()
    assert out.startswith("scrypt$") and verify_password("the AuthorizationKey of CP01", out)
    assert not verify_password("a guess", out)


def test_the_package_still_exports_the_password_helpers():
    import nowblock.ocpp as ocpp_pkg

    assert {"hash_password", "verify_password"} <= set(ocpp_pkg.__all__)
    assert ocpp_pkg.hash_password is hash_password and verify_password("k", hash_password("k", n=2**10))
