"""The ``cluster`` section: validation, and the SLURM job script dask-jobqueue generates from it (no SLURM needed)."""

import socket
import sys

import pytest
import yaml

from bigseg import config
from bigseg.cluster import ClusterError, runner, slurm_cluster
from conftest import need

SECTION = """
cluster:
  type: slurm
  queue: compute
  account: mat-sci
  cores: 8
  processes: 4
  memory: 32GiB
  walltime: 02:30:00
  jobs: 3
  job_extra_directives: ["--constraint=skylake"]
  job_script_prologue: ["module load python/3.11"]
"""


def test_cluster_section_validates_and_keeps_an_unquoted_walltime(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SECTION)
    c = config.load(cfg)["cluster"]
    # YAML 1.1 reads 02:30:00 as 9000 seconds; the setting gives back what was written
    assert c["walltime"] == "02:30:00" and c["jobs"] == 3 and c["cores"] == 8
    assert config.defaults()["cluster"] is None


@pytest.mark.parametrize("section,needle", [
    ({"type": "slurm", "cores": 4, "memory": "8GiB", "queues": "x"}, "cluster.queues"),
    ({"type": "pbs", "cores": 4, "memory": "8GiB"}, "cluster.type"),
    ({"type": "slurm", "cores": 4}, "memory"),
    ({"type": "slurm", "cores": 4, "memory": "lots"}, "cluster.memory"),
    ({"type": "slurm", "cores": 0, "memory": "8GiB"}, "cluster.cores"),
    ({"type": "slurm", "cores": 4, "memory": "8GiB", "walltime": "2 hours"}, "cluster.walltime"),
])
def test_bad_cluster_settings_name_the_key(section, needle):
    with pytest.raises(config.ConfigError, match=needle.replace(".", r"\.")):
        config.validate({"cluster": section})


def test_slurm_job_script_asks_for_what_the_config_says():
    need("dask_jobqueue", "the SLURM job script")
    spec = config.validate(yaml.safe_load(SECTION))["cluster"]
    with slurm_cluster(spec) as cluster:
        script = cluster.job_script()
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for directive in ["#SBATCH -J bigseg", "#SBATCH -p compute", "#SBATCH -A mat-sci", "#SBATCH -n 1",
                      "#SBATCH --cpus-per-task=8", "#SBATCH --mem=", "#SBATCH -t 02:30:00",
                      "#SBATCH --constraint=skylake"]:
        assert any(line.startswith(directive) for line in lines), (directive, script)
    assert "module load python/3.11" in script
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    # the prologue picks the nodes' Python: the login node's interpreter path would bypass it
    assert worker.startswith("python3 -m distributed.cli.dask_worker "), worker
    # 4 worker processes of 2 threads sharing the job's 32 GiB
    assert "--nworkers 4" in worker and "--nthreads 2" in worker and "--memory-limit 8.00GiB" in worker
    assert cluster.scheduler_address.split(":")[-1] in worker     # workers dial this scheduler


def test_without_a_prologue_workers_run_this_interpreter():
    need("dask_jobqueue", "the SLURM job script")
    spec = config.validate({"cluster": {"type": "slurm", "cores": 2, "memory": "4GiB"}})["cluster"]
    with slurm_cluster(spec) as cluster:
        worker = next(line for line in cluster.job_script().splitlines() if "distributed.cli.dask_worker" in line)
    assert worker.startswith(f"{sys.executable} -m distributed.cli.dask_worker "), worker


def test_cluster_section_without_sbatch_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))                 # no sbatch here: it used to wait at 0% forever
    spec = config.validate(yaml.safe_load(SECTION))["cluster"]
    with pytest.raises(ClusterError, match="sbatch not found on PATH.*--workers"):
        with runner(cluster=spec):
            pass


def test_unreachable_scheduler_is_one_clear_error(monkeypatch):
    with socket.socket() as s:                                # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    import distributed

    asked = []

    class Spy(distributed.Client):
        def __init__(self, *args, **kwargs):
            asked.append(kwargs.get("timeout"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(distributed, "Client", Spy)
    with pytest.raises(ClusterError, match=f"cannot reach the dask scheduler at {address}: .*dask scheduler"):
        with runner(scheduler=address, timeout="1s"):
            pass
    # the connection waits as long as asked, not dask's default (checked without timing it: no test depends
    # on the machine's speed)
    assert asked == ["1s"]
    assert issubclass(ClusterError, RuntimeError)


def test_work_errors_under_a_scheduler_are_not_connection_errors():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as local:
        with pytest.raises(FileNotFoundError):
            with runner(scheduler=local.scheduler_address):
                raise FileNotFoundError("an input")           # an OSError, but not the scheduler's


def test_chunk_memory_auto_resolves_to_a_share_of_each_threads_memory(monkeypatch):
    import dask
    from distributed.system import MEMORY_LIMIT

    from bigseg import config
    from bigseg.cluster import CHUNK_MEMORY_SHARE, Runner

    s = config.defaults()
    with dask.config.set(num_workers=2):
        resolved = Runner().resolve(s)
    assert resolved["chunk_memory"] == int(int(MEMORY_LIMIT / 2) * CHUNK_MEMORY_SHARE)
    assert s["chunk_memory"] == "auto"                     # the caller's settings are left alone
    given = dict(s, chunk_memory=12345)
    assert Runner().resolve(given) is given
