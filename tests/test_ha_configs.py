"""The high-availability configuration shipped under ops/ (docs/deployment.md): each file
renders with every placeholder filled, and the real tools accept what it renders to
(`patroni --validate-config`, `haproxy -c`). `make ha-test` runs the same files for real.

Under CI=true a missing tool fails (make test installs them: scripts/install-ha-tools.sh).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from payrail_tools.deploytest.parts import tool
from payrail_tools.hatest.cluster import OPS, Etcd, HAProxyHA, Member, render


def _need(name: str) -> str:
    found = tool(name)
    if found is None:
        message = f"{name} missing: run scripts/install-ha-tools.sh"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_every_ops_template_names_only_placeholders_the_harness_fills(tmp_path: Path):
    with pytest.raises(KeyError):  # a placeholder left out fails loudly, never renders empty
        render(OPS / "haproxy" / "payrail-ha.cfg", tmp_path / "x.cfg", api_port=1)


@pytest.mark.parametrize("synchronous", [True, False])
def test_the_patroni_member_file_is_valid_for_patroni(tmp_path: Path, synchronous: bool):
    patroni = _need("patroni")
    member = Member("pg0", tmp_path / "pg0", 12_690, 12_691)
    member.write_config(Etcd(tmp_path / "etcd", 12_692, 12_693), synchronous, strict=False)
    text = member.config.read_text()
    assert "${" not in text
    assert f"synchronous_mode: {'true' if synchronous else 'false'}" in text
    assert "use_pg_rewind: true" in text and "primary_start_timeout: 0" in text
    checked = subprocess.run(
        [patroni, "--validate-config", str(member.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Patroni's validator refuses loopback addresses (a production member must be reachable
    # from the others' machines) and wants etcd up; every other complaint is a defect.
    expected = ("must not contain", "is not reachable", "bootstrap.pg_hba  is not defined")
    complaints = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if line.strip() and not any(e in line for e in expected)
    ]
    assert complaints == []


def test_the_haproxy_file_is_valid_for_haproxy(tmp_path: Path):
    haproxy = _need("haproxy")
    members = [Member(f"pg{i}", tmp_path / f"pg{i}", 12_690 + i, 12_695 + i) for i in range(3)]
    proxy = HAProxyHA(tmp_path / "haproxy", 12_680, 12_681, 12_682, [12_683, 12_684], members)
    cfg = proxy.write_config()
    text = cfg.read_text()
    assert "option httpchk GET /primary" in text and "on-marked-down shutdown-sessions" in text
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
