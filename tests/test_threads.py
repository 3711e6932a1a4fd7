"""The thread policy (mvector/utils/threads.py): usable CPUs from affinity and cgroup quota, overrides, busy cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvector.errors import ConfigError
from mvector.utils import threads
from mvector.utils.threads import ThreadPlan, cgroup_cpu_quota, prepare_environment, thread_plan

ROOT = Path(__file__).resolve().parents[1]


def _env_without_overrides() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.ENV_THREADS)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_affinity_of_one_core_gives_one_thread_in_a_subprocess():
    code = (
        "import json, os\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from mvector.utils.threads import apply_thread_policy, usable_cpus\n"
        "import torch\n"
        "plan = apply_thread_policy()\n"
        "print(json.dumps({'usable': usable_cpus(), 'intra': plan.intra_op, 'inter': plan.inter_op,\n"
        "                  'torch': torch.get_num_threads(), 'workers': plan.loader_workers('cuda')}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env_without_overrides(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"usable": 1, "intra": 1, "inter": 1, "torch": 1, "workers": 1}


def _cgroup_v2(tmp_path: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys_fs_cgroup"
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/kube/pod/job\n")
    return root, proc


def test_cgroup_v2_quota_and_max(tmp_path):
    root, proc = _cgroup_v2(tmp_path, {"kube/pod/job": "250000 100000"})
    assert cgroup_cpu_quota(root, proc) == 2.5
    root, proc = _cgroup_v2(tmp_path / "b", {"kube/pod/job": "max 100000"})
    assert cgroup_cpu_quota(root, proc) is None
    # a parent's limit binds the child: the smallest along the path counts
    root, proc = _cgroup_v2(tmp_path / "c", {"kube/pod/job": "max 100000", "kube/pod": "50000 100000"})
    assert cgroup_cpu_quota(root, proc) == 0.5
    # a container that mounts only its own cgroup: the mount itself holds cpu.max
    root = tmp_path / "d"
    root.mkdir()
    (root / "cpu.max").write_text("300000 100000\n")
    proc = tmp_path / "d_cgroup"
    proc.write_text("0::/\n")
    assert cgroup_cpu_quota(root, proc) == 3.0


def _cgroup_v1(tmp_path: Path, mount: str, quota: str, period: str = "100000") -> tuple[Path, Path]:
    root = tmp_path / "sys_fs_cgroup"
    folder = root / mount / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
    (folder / "cpu.cfs_period_us").write_text(period + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"12:memory:/docker/abc\n4:{mount}:/docker/abc\n1:name=systemd:/docker/abc\n")
    return root, proc


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    assert cgroup_cpu_quota(*_cgroup_v1(tmp_path / "a", "cpu,cpuacct", "150000")) == 1.5
    assert cgroup_cpu_quota(*_cgroup_v1(tmp_path / "b", "cpu", "-1")) is None
    assert cgroup_cpu_quota(*_cgroup_v1(tmp_path / "c", "cpu", "400000", "200000")) == 2.0
    assert cgroup_cpu_quota(*_cgroup_v1(tmp_path / "d", "cpu", "garbage")) is None
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "no_such_file") is None


def test_usable_cpus_rounds_the_quota_up_and_never_exceeds_the_affinity(monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 1.5)
    assert threads.usable_cpus() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 0.2)
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 64.0)
    assert threads.usable_cpus() == 8
    # under a quota the busy sample is skipped (the quota is this process's own share)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 3.0)
    monkeypatch.setattr(threads, "busy_cpus", lambda seconds=0.1: pytest.fail("sampled under a quota"))
    plan = thread_plan(env={})
    assert (plan.usable, plan.intra_op, plan.source) == (3, 3, "cgroup quota")


def test_override_precedence():
    env = {"MVECTOR_NUM_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert (thread_plan(2, env=env, usable=8, busy=0).intra_op, thread_plan(2, env=env).source) == (2, "--threads")
    assert thread_plan(None, env=env, usable=8).intra_op == 3
    assert thread_plan(None, env={"OMP_NUM_THREADS": "5"}, usable=8).source == "OMP_NUM_THREADS"
    assert thread_plan(None, env={"MVECTOR_NUM_THREADS": " "}, usable=8, busy=0.0).source == "affinity"
    # an override is used as given, even above the usable CPUs and on a busy machine
    assert thread_plan(None, env={"MVECTOR_NUM_THREADS": "16"}, usable=2, busy=2.0).intra_op == 16


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_bad_environment_value_is_a_clear_error(value):
    with pytest.raises(ConfigError, match=f"MVECTOR_NUM_THREADS={value!r}"):
        thread_plan(env={"MVECTOR_NUM_THREADS": value}, usable=2)
    with pytest.raises(ConfigError, match="--threads"):
        thread_plan(0, env={}, usable=2)


def test_busy_cores_reduce_the_threads_and_reserve_leaves_room():
    assert thread_plan(env={}, usable=2, busy=2.0).intra_op == 1
    assert thread_plan(env={}, usable=2, busy=0.9).source == "busy machine"
    assert thread_plan(env={}, usable=2, busy=0.2).intra_op == 2
    assert thread_plan(env={}, usable=16, busy=5.0).intra_op == 11
    assert thread_plan(env={}, usable=4, busy=0.0, reserve=1).intra_op == 3
    assert thread_plan(env={}, usable=1, busy=0.0, reserve=1).intra_op == 1
    # torchrun ranks on one machine share it
    plan = thread_plan(env={"LOCAL_WORLD_SIZE": "2"}, usable=8, busy=0.0)
    assert (plan.usable, plan.intra_op, plan.source) == (4, 4, "2 local ranks")


def test_loader_workers_and_description():
    plan = ThreadPlan(usable=2, busy=1.8, intra_op=1, inter_op=1, source="busy machine")
    assert plan.loader_workers("cpu") == 0 and plan.loader_workers("cuda:0") == 2
    assert "1.8 CPUs in use by others" in plan.describe() and "MVECTOR_NUM_THREADS" in plan.describe()


def test_busy_cpus_sees_a_busy_process():
    spin = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)
        assert threads.busy_cpus(0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()


def test_prepare_environment_sleeps_waiting_threads_only_on_a_busy_machine_and_keeps_the_users_choice():
    env = {"KMP_BLOCKTIME": "200"}
    prepare_environment(env, busy=1.0)
    assert env == {"KMP_BLOCKTIME": "200", "OMP_WAIT_POLICY": "PASSIVE"}
    quiet = {}
    prepare_environment(quiet, busy=0.2)
    assert quiet == {}


def test_console_script_sets_quiet_waits_before_torch_and_rejects_bad_threads():
    env = _env_without_overrides()
    env.pop("OMP_WAIT_POLICY", None)
    code = "import os, sys\nimport mvector.cli\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:  # beside busy processes the console script asks for sleeping waits, before torch is imported
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert out.stdout.split() == ["PASSIVE", "False"], out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "mvector", "contrast", "--audio_path1", "a", "--audio_path2", "b", "--threads", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "--threads" in out.stderr and "Traceback" not in out.stderr
