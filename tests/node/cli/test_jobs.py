"""node/cli/jobs.py and the job-ID handling of node/cli/follow.py: any unique prefix of a
job or agreement ID works (4 and 5 characters too); an ambiguous one says so and lists
the matches; `cpn jobs` says why a negotiation ended as it did."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from support.daemons import Testnet

from node.api.client import ApiClient
from node.cli.follow import job_body, one_job
from node.cli.jobs import why
from node.errors import ApiAnswerError, ExitCode
from node.jobs.jobfile import load_job

RUNS = 17  #: more runs than hex digits: at least two share their first character


@pytest.fixture(scope="module")
def runs(net: Testnet, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """At least RUNS jobs submitted from node2 (each refused: nobody here runs containers)."""
    base = tmp_path_factory.mktemp("prefix-job")
    (base / "src").mkdir()
    (base / "src" / "f").write_text("x")
    from node.execute.oci_pack import pack_image

    pack_image([base / "src"], base / "img", cmd=["/bin/true"])
    (base / "job.toml").write_text('name = "p"\nimage = "img"\nmax_price = 1\n[resources]\nmemory_mib = 64\n')
    client = ApiClient(net.dirs[2], timeout=60)
    args = type("Args", (), {"results": str(base / "results"), "providers": 1, "timeout": 1.0, "retries": 0,
                             "peer": [net.addr(1)]})()
    for _ in range(RUNS):
        client.post("/v1/jobs?wait=agreement", job_body(args, load_job(base / "job.toml")))
    listed = json.loads(net.cpn(2, "jobs", "--json").stdout)["jobs"]
    assert len(listed) >= RUNS
    return listed  # type: ignore[no-any-return]


def _unique(ids: list[str], n: int) -> str:
    """An ID whose first ``n`` characters no other ID shares."""
    for i in ids:
        if sum(j.startswith(i[:n]) for j in ids) == 1:
            return i
    raise AssertionError(f"every {n}-character prefix is shared")  # pragma: no cover - 17 of 65536


@pytest.mark.parametrize("n", [4, 5])
def test_short_unique_prefixes_show_the_job(net: Testnet, runs: list[dict[str, Any]], n: int) -> None:
    rid = _unique([r["id"] for r in runs], n)
    for argv in (("job", "show", rid[:n], "--json"), ("job", "logs", rid[:n], "--json")):
        done = net.cpn(2, *argv)
        assert done.returncode == 0, done.stderr
    shown = json.loads(net.cpn(2, "job", "show", rid[:n], "--json").stdout)
    assert shown["id"] == rid and shown["state"] == "failed"


def test_an_ambiguous_prefix_lists_the_matches(net: Testnet, runs: list[dict[str, Any]]) -> None:
    by_first: dict[str, list[str]] = defaultdict(list)
    for r in runs:
        by_first[r["id"][0]].append(r["id"])
    first, ids = max(by_first.items(), key=lambda kv: len(kv[1]))
    assert len(ids) >= 2
    for action in ("show", "logs", "cancel"):
        done = net.cpn(2, "job", action, first)
        assert done.returncode == ExitCode.BAD_INPUT, (action, done.stderr)
        assert f"job ID prefix '{first}' is ambiguous: it matches {len(ids)} jobs" in done.stderr
        listed = {line.strip() for line in done.stderr.splitlines()[1:]}
        assert listed == set(ids[:10]), done.stderr
        assert "no job" not in done.stderr


def test_agreement_prefixes(net: Testnet, runs: list[dict[str, Any]]) -> None:
    rows = json.loads(net.cpn(2, "jobs", "--json").stdout)["agreements"]
    run_ids = [r["id"] for r in runs]
    ids = [a["id"] for a in rows if not any(r.startswith(a["id"][:5]) for r in run_ids)]
    aid = _unique(ids, 5)
    done = net.cpn(2, "job", "show", aid[:5])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"job {aid} (submitter)")
    assert "refused" in done.stdout and "no_container_runtime" in done.stdout  # the why
    missing = net.cpn(2, "job", "show", "ffffffffffffffffffff")
    assert missing.returncode == ExitCode.ERROR and "no job or agreement" in missing.stderr


def test_ambiguous_agreement_message() -> None:
    exc = ApiAnswerError("...", status=409, reason="ambiguous", detail="ab matches 2: ab01, ab02")
    err = one_job(exc, "agreement")
    assert err.code == ExitCode.BAD_INPUT
    assert str(err) == "agreement ID prefix 'ab' is ambiguous: it matches 2 agreements; give more of the ID:\n" \
        "  ab01\n  ab02"


def test_why_a_negotiation_ended(net: Testnet, runs: list[dict[str, Any]]) -> None:
    assert why({"role": "submitter", "state": "cancelled", "detail": ""}) == \
        "not chosen: another provider's quote won"
    assert why({"role": "provider", "state": "cancelled", "detail": ""}) == \
        "the submitter chose another provider's quote"
    assert why({"role": "submitter", "state": "refused", "detail": "busy: 3 queued"}) == "busy: 3 queued"
    table = net.cpn(2, "jobs")
    assert table.returncode == 0
    header = next(line for line in table.stdout.splitlines() if line.startswith("ID "))
    assert header.split()[-1] == "WHY"
    assert "no_container_runtime" in table.stdout

