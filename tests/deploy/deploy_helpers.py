"""Shared by the deployment tests (docs/DEPLOY.md "Tests"): paths, the parsed template, where the
linters are, and the fixtures (the template, the sdserve binary from $SDSERVE_BIN, default
build/release/sdserve, and a release tarball packaged from it). There is deliberately no conftest.py
here: tests/e2e imports names `from conftest`, which a second conftest module would shadow when both
folders run in one pytest session; test modules import these fixtures by name instead."""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from fakes import ROOT

AWS = ROOT / "deploy" / "aws"
TEMPLATE = AWS / "sdserve.yaml"


def load_template(text=None):
    """The template as plain dicts and lists, short-form tags (!Ref, !Sub ...) in their long form."""
    from cfnlint.decode import decode_str
    template, matches = decode_str(text if text is not None else TEMPLATE.read_text())
    assert not matches, matches
    return json.loads(json.dumps(template))


def tool(name, env_var, *candidates):
    """A linter's path: $ENV_VAR, one of the candidates, else PATH. Fails (never skips) when missing:
    these checks are part of the acceptance criteria."""
    for c in [os.environ.get(env_var)] + [str(c) for c in candidates]:
        if c and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: set ${env_var} or install it (scripts/deps.sh; docs/DEPLOY.md \"Tests\")")
    return found


@pytest.fixture(scope="session")
def template():
    return load_template()


@pytest.fixture(scope="session")
def sdserve_bin() -> str:
    path = os.environ.get("SDSERVE_BIN", str(ROOT / "build" / "release" / "sdserve"))
    if not os.path.exists(path):
        pytest.fail(f"sdserve binary not found at {path}; build it or set SDSERVE_BIN")
    return path


@pytest.fixture(scope="session")
def release(sdserve_bin, tmp_path_factory):
    """(folder, tarball name, sha256) of a release tarball packaged from the binary's build folder."""
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([str(ROOT / "scripts" / "package.sh"), "--build-dir", str(pathlib.Path(sdserve_bin).parent),
                        "--out", str(out)], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    tarball = pathlib.Path(p.stdout.decode().strip().splitlines()[-1])
    return out, tarball.name, hashlib.sha256(tarball.read_bytes()).hexdigest()
