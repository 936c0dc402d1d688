"""Cost of issue 17's content hashing on the default run, as a share of its time.

``python -m benchmarks.hash_cost [--run results/fashion-mnist-cnn-small-quick]``
hashes (sha256, :func:`robustpath.io.store.sha256_bytes`, as every verified save and load
does) every cached artifact under ``<run>/ckpt/`` and the run's primary outputs (the
files its ``manifest.json`` hashes), the bytes already in memory as they are when the
stores hash them; the best of ``--repeats`` passes. It then counts the bytes a run
from scratch hashes:

* every cache artifact once when written and, as an upper bound, once more when read
  back (a from-scratch run keeps most stage outputs in memory);
* the per-epoch checkpoints of endpoints and curves (issue 17.5), written each epoch
  and deleted at the end, so absent from ``ckpt/``: estimated as ``epochs`` x 2 x the
  final checkpoint's size (the weights plus SGD's momentum buffers; the RNG states
  are a few KB);
* the manifest's primary files twice (``runfolder.commit`` and ``report``'s verify),

and divides their hashing time (at the measured throughput) by the run's time from
scratch, ``benchmarks/data/default_run_timings_from_scratch.json`` (the per-stage
seconds ``bench`` wrote into ``timings.json``, summed). Reading the files from disk is
not counted: the loads read them anyway, hashed or not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

DEFAULT_RUN = Path("results/fashion-mnist-cnn-small-quick")
DEFAULT_TIMINGS = Path("benchmarks/data/default_run_timings_from_scratch.json")


def _hash_seconds(blobs: list[bytes], repeats: int) -> float:
    """Best-of-``repeats`` seconds to sha256 every blob once."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in blobs:
            hashlib.sha256(b).hexdigest()
        best = min(best, time.perf_counter() - start)
    return best


def _total_seconds(timings: Path) -> float:
    t = json.loads(timings.read_text())
    if "total" in t:
        return float(t["total"])
    st = t["stages"]
    items = st.values() if isinstance(st, dict) else st
    return sum(float(e["seconds"]) for e in items)


def measure(run: Path = DEFAULT_RUN, timings: Path = DEFAULT_TIMINGS, repeats: int = 5) -> dict:
    """Bytes and seconds of hashing in ``run``, and their share of its time from scratch."""
    ckpt = sorted(p for p in (run / "ckpt").rglob("*") if p.is_file() and
                  not p.name.startswith(".") and not p.name.endswith(".lock"))
    if not ckpt:
        raise SystemExit(f"{run}/ckpt holds no cached artifacts (run the benchmark first)")
    blobs = [p.read_bytes() for p in ckpt]
    cache_bytes = sum(map(len, blobs))
    pass_s = _hash_seconds(blobs, repeats)
    throughput = cache_bytes / pass_s  # bytes per second
    manifest = json.loads((run / "manifest.json").read_text()) \
        if (run / "manifest.json").is_file() else {"files": {}}
    primary = [run / rel for rel in manifest["files"] if (run / rel).is_file()]
    primary_bytes = sum(p.stat().st_size for p in primary)
    cfg = json.loads((run / "config.json").read_text())
    epoch_bytes = 0
    for folder, epochs in (("endpoints", cfg.get("endpoint_epochs", 0)),
                           ("curves", cfg.get("curve_epochs", 0))):
        finals = [p for p in (run / "ckpt" / folder).rglob("*.safetensors")]
        epoch_bytes += epochs * 2 * sum(p.stat().st_size for p in finals)
    hashed = 2 * cache_bytes + epoch_bytes + 2 * primary_bytes
    hash_s = hashed / throughput
    total = _total_seconds(timings)
    return {"run": str(run), "files": len(ckpt), "cache_bytes": cache_bytes,
            "cache_pass_s": pass_s, "throughput_mb_s": throughput / 1e6,
            "epoch_checkpoint_bytes": epoch_bytes, "primary_files": len(primary),
            "primary_bytes": primary_bytes, "hashed_bytes_from_scratch": hashed,
            "hash_s_from_scratch": hash_s, "run_s_from_scratch": total,
            "share": hash_s / total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hash_cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=str(DEFAULT_RUN), help="a finished bench run with ckpt/")
    p.add_argument("--timings", default=str(DEFAULT_TIMINGS),
                   help="timings.json of the same configuration's run from scratch")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    m = measure(Path(args.run), Path(args.timings), args.repeats)
    print(f"{m['files']} cached artifacts, {m['cache_bytes'] / 1e6:.2f} MB: one sha256 pass "
          f"{1e3 * m['cache_pass_s']:.1f} ms ({m['throughput_mb_s']:.0f} MB/s)")
    print(f"from scratch: {m['hashed_bytes_from_scratch'] / 1e6:.1f} MB hashed (cache x2, "
          f"per-epoch checkpoints {m['epoch_checkpoint_bytes'] / 1e6:.1f} MB, "
          f"{m['primary_files']} manifest files x2) = {1e3 * m['hash_s_from_scratch']:.0f} ms "
          f"of a {m['run_s_from_scratch']:.0f} s run: {100 * m['share']:.4f} %")
    print(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
