"""The ``cluster`` section: validation, and the SLURM job script dask-jobqueue generates from it (no SLURM needed)."""

import pytest
import yaml

from bigseg import config
from bigseg.cluster import slurm_cluster

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
    # 4 worker processes of 2 threads sharing the job's 32 GiB
    assert "--nworkers 4" in worker and "--nthreads 2" in worker and "--memory-limit 8.00GiB" in worker
    assert cluster.scheduler_address.split(":")[-1] in worker     # workers dial this scheduler


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
