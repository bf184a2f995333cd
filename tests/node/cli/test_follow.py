"""node/cli/follow.py: the exit status of a run (0 only when the container exited 0 and
its outputs verified), and how `cpn submit --follow` prints a run's events.

The end-to-end test runs real containers (podman, private storage): two providers
and a submitter as `cpn node run` processes; `cpn submit --follow` for a job that
exits 0, one that exits 7, one killed at its run timeout and one killed for memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.daemons import run_testnet
from support.podman import shared_env

from node.cli.follow import print_event, print_run, run_exit_code
from node.errors import ExitCode
from node.execute.selftest_image import BUSYBOX, build_busybox_image


def _run(state: str, outcome: str | None = None, exit_code: int | None = None, **extra: Any) -> dict[str, Any]:
    run: dict[str, Any] = {"id": "r" * 32, "state": state, "attempts": [{"agreement_id": "a"}], "quotes": [],
                           "detail": "", **extra}
    if outcome is not None:
        run["result"] = {"outcome": outcome, "exit_code": exit_code, "detail": extra.get("result_detail", "")}
    return run


@pytest.mark.parametrize(
    ("run", "code"),
    [
        (_run("finished", "exited", 0), ExitCode.OK),
        (_run("finished", "exited", 7), ExitCode.JOB_FAILED),
        (_run("finished", "oom", 137), ExitCode.JOB_FAILED),
        (_run("finished", "timeout", None), ExitCode.JOB_FAILED),
        (_run("cancelled", "cancelled", None), ExitCode.CANCELLED),
        (_run("cancelled"), ExitCode.CANCELLED),
        (_run("disputed", "exited", 0, problems=["out/x: not delivered"]), ExitCode.TRANSFER_FAILED),
        (_run("failed", "failed", None, result_detail="transfer of sha256:ab failed: gone"),
         ExitCode.TRANSFER_FAILED),
        (_run("failed", "failed", None, result_detail="image refused"), ExitCode.JOB_FAILED),
        (_run("failed"), ExitCode.JOB_FAILED),  # the provider vanished and nobody else was left
        ({**_run("failed"), "attempts": []}, ExitCode.NO_PROVIDER),
        ({**_run("failed"), "attempts": [], "quotes": [{"status": "refused"}]}, ExitCode.REFUSED),
        (_run("running"), ExitCode.ERROR),
    ],
)
def test_exit_status_of_a_run(run: dict[str, Any], code: ExitCode) -> None:
    assert run_exit_code(run) == code


def _printed(events: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], total: int = 2048) -> list[str]:
    state: dict[str, Any] = {"total": total}
    for ev in events:
        print_event(ev, state)
    return capsys.readouterr().out.splitlines()


def test_verified_is_said_before_running(capsys: pytest.CaptureFixture[str]) -> None:
    """The runner emits a provider's update as phase then progress: `running` came first."""
    lines = _printed([
        {"event": "phase", "phase": "transferring", "detail": ""},
        {"event": "phase", "phase": "running", "detail": ""},
        {"event": "progress", "done": 2048, "total": 2048},
        {"event": "log", "line": "hi"},
    ], capsys)
    assert lines == ["transferring", "  image and inputs on the provider: 2.0 KiB verified", "running", "  | hi"]


def test_a_timeout_is_no_exit_code_none(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _printed([{"event": "result", "outcome": "timeout", "exit_code": None, "detail": ""},
                      {"event": "result", "outcome": "oom", "exit_code": 137, "detail": ""},
                      {"event": "result", "outcome": "exited", "exit_code": 7, "detail": ""}], capsys)
    assert lines == ["result: killed: ran out of time (raise timeouts.run_s)",
                     "result: killed: out of memory (raise resources.memory_mib)",
                     "result: exited with exit code 7"]
    print_run({"id": "r", "state": "finished", "result": {
        "outcome": "timeout", "exit_code": None, "detail": "", "wall_ms": 1, "cpu_ms": 1,
        "peak_memory_bytes": 1, "provider": "P", "outputs": []}})
    out = capsys.readouterr().out
    assert "None" not in out and "job r: finished (killed: ran out of time" in out


def test_a_retry_starts_its_phases_afresh(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _printed([
        {"event": "phase", "phase": "running", "detail": ""},
        {"event": "attempt_failed", "provider": "P" * 20, "detail": "gone", "agreement_id": "a" * 32,
         "retries_left": 0},
        {"event": "agreement", "agreement_id": "b" * 32, "provider": "Q", "price": 5032, "max_run_s": 9},
        {"event": "phase", "phase": "running", "detail": ""},
    ], capsys)
    assert lines[-1] == "running" and lines.count("running") == 2
    assert sum("verified" in line for line in lines) == 2
    assert "price 0.005032 units/job (5032 micro-units)" in lines[-3]


# --------------------------------------------------------------------------- end to end


def _job(base: Path, name: str, script: str, *, memory_mib: int = 64, run_s: int = 60) -> Path:
    job = base / f"{name}.toml"
    job.write_text(
        f'name = "{name}"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\nargs = ["{script}"]\n'
        f'outputs = ["/out"]\nmax_price = 100000\n[resources]\ncpus = 0.5\nmemory_mib = {memory_mib}\n'
        f"[timeouts]\ntransfer_s = 60\nqueue_s = 60\nrun_s = {run_s}\n"
    )
    return job


@pytest.mark.podman
@pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static")
def test_submit_follow_exit_status(tmp_path: Path) -> None:
    env = shared_env()
    conf = tmp_path / "provider.toml"
    conf.write_text(f'[execution]\nenabled = true\npodman_root = "{env.settings.root}"\n'
                    f'podman_runroot = "{env.settings.runroot}"\n')
    build_busybox_image(tmp_path / "image")
    provider = ("--config", str(conf))
    with run_testnet(tmp_path / "net", provider, provider, ()) as net:
        peers = ("--peer", net.addr(0), "--peer", net.addr(1))

        def submit(job: Path) -> tuple[int, str]:
            done = net.cpn(2, "submit", str(job), "--follow", "--retries", "0", *peers,
                           "--results", str(tmp_path / "results"), timeout=300)
            assert "Traceback" not in done.stderr, done.stderr
            return done.returncode, done.stdout

        code, out = submit(_job(tmp_path, "ok", "echo hello; echo hi > /out/x"))
        assert code == ExitCode.OK, out
        lines = out.splitlines()
        verified = next(i for i, line in enumerate(lines) if "image and inputs on the provider" in line)
        assert verified < lines.index("running") < lines.index("  | hello"), out
        assert "units/job (" in out and "micro-units)" in out
        # Both providers quoted; the one not chosen says why in `cpn jobs`.
        assert "not chosen: another provider's quote won" in net.cpn(2, "jobs").stdout

        code, out = submit(_job(tmp_path, "seven", "echo failing; exit 7"))
        assert code == ExitCode.JOB_FAILED and "result: exited with exit code 7" in out, out
        code, out = submit(_job(tmp_path, "slow", "sleep 30", run_s=2))
        assert code == ExitCode.JOB_FAILED and "killed: ran out of time" in out, out
        assert "None" not in out
        code, out = submit(_job(tmp_path, "hungry", "echo filling; tail /dev/zero", memory_mib=16))
        assert code == ExitCode.JOB_FAILED and "killed: out of memory" in out, out
