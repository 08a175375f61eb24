"""Make the repository root importable (the scripts are flat modules, not a package)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The tests use tiny matrices: one thread is fastest for them, and it keeps the suite from
# thrashing when the machine is busy with other work (OpenMP threads spin while they wait).
import torch  # noqa: E402

torch.set_num_threads(1)
