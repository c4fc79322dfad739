"""Run every benchmark once, one after the other (numbers go in the README)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for cmd in (["loader_vs_step.py"], ["engine_overhead.py"], ["dag_overhead.py"], ["backbone_throughput.py", "quick"],
            ["pipeline_walltime.py", "smoke"], ["pipeline_walltime.py", "quick"], ["cls_walltime.py", "quick"], ["family_walltime.py", "nodule3d", "quick"],
            ["family_walltime.py", "vl_fusion", "quick"], ["cls_eval.py", "quick"], ["cpu_layout.py", "quick"],
            ["dvc_lock_overhead.py", "--others", "150", "--stages", "8"]):
    subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True, cwd=HERE)
