"""Password and token hashes as documented: the API's write tokens (the docs' hash example and command,
the weak-token warning) and the OCPP password-hash command.

API write tokens as documented: the docs' hash example and command, the weak-token warning.

The documented password-hash command, ``python3 -m nowblock.ocpp.auth PASSWORD``, runs clean.
"""

import hashlib
import logging
import re
import secrets
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
import os

from nowblock.api import TokenCheck, TokenConfigError, hash_token
import nowblock
from nowblock.ocpp import hash_password, verify_password


ROOT = Path(__file__).resolve().parents[1]
API_MD = (ROOT / "docs" / "api.md").read_text()


def test_a_well_known_token_hash_warns_at_start(caplog):
    weak = "sha256:" + hashlib.sha256(b"password").hexdigest()  # the docs' example until session 36
    with caplog.at_level(logging.WARNING, logger="nowblock.api.auth"):
        tc = TokenCheck([weak])
    assert tc.verify("password")  # still accepted (a running block keeps its API), but said loudly
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "'password'" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nowblock.api.auth"):
        TokenCheck([hash_token(secrets.token_urlsafe(32))])
    assert caplog.records == []


def test_the_documented_hash_example_accepts_no_guessable_token():
    fence = re.search(r"```toml\n(\[api\].*?)```", API_MD, re.S).group(1)
    listed = tomllib.loads(fence)["api"]["token_hashes"]
    for h in listed:
        try:
            tc = TokenCheck([h])
        except TokenConfigError:
            continue  # a placeholder: copied as it stands, serve refuses to start
        for guess in ("password", "123456", "admin", "secret", "changeme", "token", "THE-TOKEN"):
            assert not tc.verify(guess), guess


def test_the_documented_token_command_prints_a_token_and_its_hash():
    cmds = [line.split("#")[0].strip() for line in re.findall(r"^python -c .*$", API_MD, re.M)
            if "hash_token" in line]
    assert cmds, "no hash_token command in docs/api.md"
    for cmd in cmds:
        argv = shlex.split(cmd)
        r = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        hashes = re.findall(r"^sha256:[0-9a-f]{64}$", r.stdout, re.M)
        assert len(hashes) == 1
        TokenCheck(hashes)
    assert re.search(r"at least 16 characters", API_MD)


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
