"""Workers forked before the rendezvous (gaudi_train.prefork) start as torchrun's would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gaudi_train import prefork

pytestmark = pytest.mark.training

SCRIPT = """\
import json, os, sys, time
seen = {k: os.environ.get(k) for k in (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
    "TORCHELASTIC_RESTART_COUNT", "OMP_NUM_THREADS", "GAUDI3_JOB_NAME")}
print("WORKER " + json.dumps({"pid": os.getpid(), "argv": sys.argv, "path0": sys.path[0],
    "name": __name__, "env": seen}), flush=True)
# Rank 1 fails only after rank 0 has reported (torchrun then stops the others).
marker = sys.argv[2] + os.environ.get("GAUDI3_PREFORK", "")
if os.environ["RANK"] == "0":
    open(marker, "w").close()
    raise SystemExit(0)
for _ in range(600):
    if os.path.exists(marker):
        break
    time.sleep(0.05)
raise SystemExit(int(sys.argv[1]))
"""


def workers(text: str) -> dict[str, dict[str, object]]:
    """What each rank's script reported, by rank, without its process id."""
    found = {}
    for line in re.findall(r"^WORKER (.*)$", text, re.M):
        seen = json.loads(line)
        seen.pop("pid")
        found[seen["env"]["RANK"]] = seen
    return found


def test_forked_workers_see_what_fresh_ones_see_and_their_exit_code_fails_the_launcher(
    launch, job_env, tmp_path: Path
) -> None:
    script = tmp_path / "report.py"
    script.write_text(SCRIPT)
    marker = str(tmp_path / "rank0-reported")
    flags = ("--nproc", "2", "--no-metrics", "--max-restarts", "0", "--script", str(script))
    flags += ("2", marker)

    forked = launch(*flags, env=job_env(GAUDI3_JOB_NAME="fork"))
    fresh = launch(*flags, env=job_env(GAUDI3_JOB_NAME="fork", GAUDI3_PREFORK="0"))
    # Rank 1 exits 2 (a configuration error): torchrun reports it, the pod would fail with it.
    assert forked.wait() == 2, forked.tail()
    assert fresh.wait() == 2, fresh.tail()

    pids = {int(p) for p in re.findall(r"runs in process (\d+), forked", forked.text())}
    reported = {json.loads(x)["pid"] for x in re.findall(r"^WORKER (.*)$", forked.text(), re.M)}
    assert len(pids) == 2 and pids == reported, forked.tail()
    assert "forked before the rendezvous" not in fresh.text()
    assert workers(forked.text()) == workers(fresh.text())
    assert workers(fresh.text())["1"] == {
        "argv": [str(script), "2", marker],
        "path0": str(tmp_path),
        "name": "__main__",
        "env": {
            "RANK": "1",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "0",
            "MASTER_ADDR": workers(fresh.text())["1"]["env"]["MASTER_ADDR"],  # type: ignore[index]
            "TORCHELASTIC_RESTART_COUNT": "0",
            "OMP_NUM_THREADS": "1",
            "GAUDI3_JOB_NAME": "fork",
        },
    }


def test_only_torchruns_per_worker_variables_may_differ_from_the_forked_environment() -> None:
    forked = {"PATH": "/bin", "OMP_NUM_THREADS": "1"}
    final = {**forked, "RANK": "3", "WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "j-1"}
    assert prefork.compatible_env(forked, final) == []
    assert prefork.compatible_env(forked, {**final, "OMP_NUM_THREADS": "4"}) == ["OMP_NUM_THREADS"]
    assert prefork.compatible_env(forked, {**final, "LD_PRELOAD": "x.so"}) == ["LD_PRELOAD"]


def test_only_plain_python_commands_are_handed_to_a_forked_worker() -> None:
    py = sys.executable
    assert prefork.worker_argv([py, "-u", "-m", "gaudi_train.worker", "--lr=1"]) == [
        "-m",
        "gaudi_train.worker",
        "--lr=1",
    ]
    assert prefork.worker_argv([py, "-u", "train.py", "--x"]) == ["train.py", "--x"]
    assert prefork.worker_argv(["numactl", "-N0", py, "-u", "train.py"]) is None
    assert prefork.worker_argv([py, "-u", "-X", "dev", "train.py"]) is None
    assert prefork.worker_argv(["/usr/bin/train", "--x"]) is None  # torchrun --no-python


def test_forking_early_is_switchable_and_needs_the_worker_count_without_probing() -> None:
    assert prefork.wanted({}, nproc_known=True)
    assert not prefork.wanted({}, nproc_known=False)
    assert not prefork.wanted({"GAUDI3_PREFORK": "0"}, nproc_known=True)
    assert prefork.wanted({"GAUDI3_PREFORK": "1"}, nproc_known=True)


def run_alone(code: str, cwd: Path) -> None:
    """Run `code` in a fresh interpreter. `fork_zygotes` refuses to fork a process that
    runs other threads, and by this point of a full run pytest's process does (earlier
    tests' client pools), so these checks cannot run in it."""
    tree = str(Path(prefork.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH", "")) if p)
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": path},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CHECKED" in r.stdout


def test_a_handed_off_worker_reports_its_exit_code_and_death_by_signal_as_popen_would(
    tmp_path: Path,
) -> None:
    (tmp_path / "exits.py").write_text("import os, sys\nsys.exit(3 + int(os.environ['RANK']))\n")
    (tmp_path / "sleeps.py").write_text("import time\ntime.sleep(60)\n")
    run_alone(
        """
        import sys
        from gaudi_train import prefork

        pool = prefork.fork_zygotes(2, preload=())
        assert pool is not None
        done = pool.hand_off(0, [sys.executable, "-u", "exits.py"], {**pool.env, "RANK": "2"})
        stuck = pool.hand_off(1, [sys.executable, "-u", "sleeps.py"], {**pool.env, "RANK": "1"})
        assert done.wait(timeout=30) == 5
        assert stuck.poll() is None
        stuck.kill()
        assert stuck.wait(timeout=30) == -9
        print("CHECKED")
        """,
        tmp_path,
    )


def test_unused_and_mismatched_zygotes_are_dismissed_without_leaving_a_process(
    tmp_path: Path,
) -> None:
    run_alone(
        """
        import os, sys
        from gaudi_train import prefork

        pool = prefork.fork_zygotes(2, preload=())
        assert pool is not None
        pids = [pid for pid, _ in pool.waiting.values()]
        odd = {**pool.env, "LD_PRELOAD": "x.so"}  # read at start-up: a fork cannot honour it
        assert pool.hand_off(0, [sys.executable, "-u", "t.py"], odd) is None
        pool.close()
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # reaped: no zombie, no orphan
            raise AssertionError(f"zygote {pid} was not reaped")
        print("CHECKED")
        """,
        tmp_path,
    )
