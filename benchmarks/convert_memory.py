"""Peak memory of a full-size conversion, measured on a synthetic full-size checkpoint.

Writes a VGGT-1B-shaped checkpoint (random float32 tensors with the exact key list of
``../shared/fixtures/vggt_keys_fullsize.json``, 5.0 GB) to a scratch folder, then runs
``page4d convert`` on it in a fresh process and reports that process's peak RSS next to the
checkpoint size. A conversion that loaded the whole source next to the model would peak at about
2× the checkpoint; streaming keeps it near 1×.

    python benchmarks/convert_memory.py [--format safetensors|pt] [--scratch DIR] [--keys PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def write_checkpoint(keys: Path, path: Path) -> int:
    """Random tensors with the listed names and shapes, written as one ``.safetensors`` or ``.pt`` file
    (the latter wrapped as ``{'model': state}``, as VGGT's ``model.pt``); returns its size in bytes."""
    code = (
        "import json, sys, torch\n"
        "from safetensors.torch import save_file\n"
        "keys = json.load(open(sys.argv[1]))['keys']\n"
        "g = torch.Generator().manual_seed(0)\n"
        "state = {k: torch.randn(s, generator=g) * 0.02 for k, s in keys.items()}\n"
        "save_file(state, sys.argv[2]) if sys.argv[2].endswith('.safetensors') else "
        "torch.save({'model': state}, sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(keys), str(path)], check=True)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/page4d-convert-bench"))
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--keys", type=Path, default=repo.parent / "shared" / "fixtures" / "vggt_keys_fullsize.json")
    parser.add_argument("--format", choices=("safetensors", "pt"), default="safetensors")
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    source = args.scratch / f"vggt_fullsize.{args.format}"
    try:
        size = write_checkpoint(args.keys, source)
        start = time.perf_counter()
        # A fresh process that reports its own peak RSS (RUSAGE_CHILDREN would include the generator's).
        code = (
            "import resource, sys\n"
            "from page4d.cli.main import main\n"
            "code = main(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "sys.exit(code)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, "convert", str(source), "-o", str(args.scratch / "out"), "--overwrite",
             "--quiet"],
            check=True, capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        peak = int(result.stdout.strip().splitlines()[-1]) * 1024
        report = json.loads((args.scratch / "out" / "load_report.json").read_text())
        keys = len(report["mapped"])
        print(f"synthetic VGGT-1B checkpoint ({args.format}): {size / 1e9:.2f} GB, {keys} keys converted")
        print(f"page4d convert: {seconds:.0f} s, peak RSS {peak / 1e9:.2f} GB = {peak / size:.2f}x the checkpoint")
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
