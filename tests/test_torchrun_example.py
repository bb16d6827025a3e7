"""examples/torchrun_pretrain.sh launches `python -m pretrain` under torchrun with flags both accept: run here with a
stand-in `torchrun` that records its arguments, which are then parsed by torchrun's own parser and by
`python -m pretrain`'s; the commented multi-node Slurm variant is checked the same way, with stand-ins for srun and
scontrol. (tests/test_ddp.py runs the real torchrun on 2 gloo ranks.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from torch.distributed.run import get_args_parser

from pretrain.__main__ import _parser

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "torchrun_pretrain.sh"

RECORDER = """#!{py}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "omp": os.environ.get("OMP_NUM_THREADS")}}) + "\\n")
"""
FAKE_SRUN = '#!/bin/bash\nexec "$@"\n'  # one task: the command itself
FAKE_SCONTROL = '#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && printf "gpu-node-07\\ngpu-node-08\\n"\n'


def _fakes(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"torchrun": RECORDER.format(py=sys.executable), "srun": FAKE_SRUN,
                       "scontrol": FAKE_SCONTROL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "log")}


def _calls(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]


def _parse(argv: list[str]):
    """torchrun's arguments, then `python -m pretrain`'s (argparse exits 2 on a flag it does not know)."""
    targs = get_args_parser().parse_args(argv)
    assert targs.module and targs.training_script == "pretrain", argv
    return targs, _parser().parse_args(targs.training_script_args)


def test_script_is_valid_bash_and_its_flags_parse(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    env = {**_fakes(tmp_path), "TORCHRUN": "torchrun", "NPROC": "3", "OMP_NUM_THREADS": "1"}
    flags = ["--upstream", "mockingjay:small", "--corpus", "data/synth", "--out", str(tmp_path / "out dir"),
             "--recipe", "preln_stack3", "--steps", "40", "--batch-size", "16", "--resume"]
    done = subprocess.run(["bash", str(SCRIPT), *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env={**env, "NPROC": "2"}, capture_output=True, text=True,
                          timeout=60)  # no flags: the built-in corpus and the default recipe
    assert done.returncode == 0, done.stderr
    (given, default) = _calls(tmp_path)
    targs, pargs = _parse(given["argv"])
    assert targs.standalone and targs.nproc_per_node == "3" and given["omp"] == "1"
    assert pargs.out == tmp_path / "out dir" and pargs.steps == 40 and pargs.batch_size == 16 and pargs.resume
    targs, pargs = _parse(default["argv"])
    assert targs.nproc_per_node == "2" and pargs.upstream == "mockingjay:small" and pargs.corpus == Path("data/synth")


def test_commented_slurm_variant_is_valid_bash_and_its_flags_parse(tmp_path):
    lines = SCRIPT.read_text().splitlines()
    start = lines.index("#   #!/bin/bash")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    batch = tmp_path / "pretrain.sbatch"
    batch.write_text("\n".join(block) + "\n")
    assert subprocess.run(["bash", "-n", str(batch)], capture_output=True).returncode == 0
    assert any(line.startswith("#SBATCH --nodes=") for line in block)
    env = {**_fakes(tmp_path), "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "32"}
    done = subprocess.run(["bash", str(batch)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (call,) = _calls(tmp_path)
    targs, pargs = _parse(call["argv"])
    assert (targs.nnodes, targs.nproc_per_node, targs.rdzv_backend, targs.rdzv_endpoint, targs.rdzv_id) == \
        ("2", "8", "c10d", "gpu-node-07:29500", "4242")
    assert not targs.standalone and call["omp"] == "4"
    assert pargs.upstream == "mockingjay:base" and pargs.batch_size == 64 and pargs.resume
