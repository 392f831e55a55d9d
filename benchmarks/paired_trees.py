"""Whole ``nowblock.optimize`` calls on instance-matrix cells with two source trees, paired in one
run (issue 15; docs/benchmarks.md, session 38).

Each arm is a worker process with its own ``src`` on ``sys.path`` (numba's cache is per tree),
warmed up once; for each cell and round both arms plan the same block back to back, the order
alternating between rounds, so a busy machine slows both alike and the ratio of their call times
is what counts. Every plan is checked outside the optimizer (every fuse phase, slot, 0 or at
least the minimum, the unbalance limit with real draws) and its energy given as a share of the
plain LP's of the same cars (:func:`milp_matrix.lp_floor`).

Usage::

    PYTHONPATH=src python3 benchmarks/paired_trees.py --base HEAD~1 --cars 50 --rounds 1
    PYTHONPATH=src python3 benchmarks/paired_trees.py --old-src /tmp/old/src --cells 50-15%-tree-5min-load

``--base REV``: the old arm is ``git archive REV src`` (unpacked under ``--work``); else
``--old-src``. The new arm is ``--new-src`` (default: this checkout's ``src``). ``--cars``:
every cell of the full matrix with those sizes; ``--cells``: labels (as ``bench_milp_matrix.py``
names them: cars, fuse share, ``flat``/``tree``, step, then ``load`` and/or ``unb``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import nowblock as nb
from milp_matrix import check_schedule
from nowblock.milp import MilpPolicy
from nowblock.milp.testing import MatrixCell, matrix_block

def parse(label):
    p = label.split("-")
    return MatrixCell(int(p[0]), int(p[1].rstrip("%")) / 100, p[2] == "tree", p[3], "load" in p[4:], "unb" in p[4:])

MilpPolicy.warm_up()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    label = line.strip()
    if not label:
        continue
    cell = parse(label)
    b = matrix_block(cell)
    t0 = time.perf_counter()
    s = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step=cell.step,
                    base_load=b["base_load"], prices=b["prices"])
    dt = time.perf_counter() - t0
    chk = check_schedule(b, cell.step, s.current_a, step_a=1.0)
    print(json.dumps({"label": label, "seconds": dt, "status": s.status, "gap": float(s.mip_gap),
                      "objective": float(s.objective), "ok": bool(chk["ok"]), "violations": chk["violations"],
                      "energy_kwh": chk["energy_kwh"], "method": s.method}), flush=True)
"""


class Arm:
    """A worker process planning matrix cells with the ``nowblock`` of one source tree."""

    def __init__(self, name: str, src: Path) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(src), str(HERE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read()  # warmed up

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"arm {self.name}: worker ended")
            if line.startswith("{"):
                return json.loads(line)

    def plan(self, label: str) -> dict:
        """Plan one cell; returns the worker's record (seconds, status, gap, energy, feasibility)."""
        self.proc.stdin.write(label + "\n")
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def archive(rev: str, work: Path) -> Path:
    """``git archive REV src`` unpacked under ``work``; returns its ``src``."""
    out = work / f"src-{rev.replace('/', '_')}"
    if not (out / "src").exists():
        out.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "archive", rev, "src"], cwd=HERE.parent, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
    return out / "src"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the pairs (module docstring); print each and a summary; return the records."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision of the old arm")
    ap.add_argument("--old-src", type=Path)
    ap.add_argument("--new-src", type=Path, default=HERE.parent / "src")
    ap.add_argument("--cars", help="comma-separated sizes of the full matrix, e.g. 50")
    ap.add_argument("--cells", help="comma-separated cell labels")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nowblock-paired-trees")
    args = ap.parse_args(argv)
    if (args.base is None) == (args.old_src is None):
        ap.error("give exactly one of --base and --old-src")
    sys.path.insert(0, str(args.new_src))
    sys.path.insert(0, str(HERE))
    import os

    from milp_matrix import cells, lp_floor
    from nowblock.milp.testing import MatrixCell, matrix_block

    if args.cells:
        labels = [x.strip() for x in args.cells.split(",") if x.strip()]
    elif args.cars:
        os.environ["NOWBLOCK_MILP_MATRIX_CARS"] = args.cars
        labels = [c.label for c in cells(full=True)]
    else:
        ap.error("give --cars or --cells")
    old_src = archive(args.base, args.work) if args.base else args.old_src
    arms = [Arm("old", old_src), Arm("new", args.new_src)]
    records = []
    try:
        for label in labels:
            p = label.split("-")
            cell = MatrixCell(int(p[0]), int(p[1].rstrip("%")) / 100, p[2] == "tree", p[3], "load" in p[4:],
                              "unb" in p[4:])
            floor = lp_floor(matrix_block(cell), cell.step)
            for r in range(args.rounds):
                for arm in (arms if r % 2 == 0 else arms[::-1]):
                    rec = arm.plan(label)
                    rec.update(arm=arm.name, round=r, share=rec["energy_kwh"] / floor["energy_kwh"],
                               lp_seconds=floor["seconds"])
                    records.append(rec)
                    print(f"{label:28s} {arm.name} r{r} {rec['seconds']:7.2f} s {rec['status']:11s} gap "
                          f"{rec['gap']:.4f} feasible {rec['ok']} energy {rec['share']:.5f} of the LP's "
                          f"({rec['method']})", flush=True)
    finally:
        for arm in arms:
            arm.close()
    summary(records)
    return records


def summary(records: list[dict]) -> None:
    """Per arm: cells below 99.5 % of the LP's energy, infeasible plans, gaps above 1 %; the
    median and extreme ratios of new to old call times over the cells (medians of rounds)."""
    by = {}
    for r in records:
        by.setdefault(r["label"], {}).setdefault(r["arm"], []).append(r)
    for arm in ("old", "new"):
        rows = [x for r in by.values() for x in r.get(arm, [])]
        low = sorted({x["label"] for x in rows if x["share"] < 0.995})
        worst = min(rows, key=lambda x: x["share"])
        print(f"{arm}: {len(rows)} plans, infeasible {sum(not x['ok'] for x in rows)}, below 99.5 % of the LP's "
              f"energy {len(low)} cells {low}, worst {worst['share']:.5f} ({worst['label']}), gap > 1 % in "
              f"{sum(x['gap'] > 0.01 for x in rows)}")
    ratios = {lab: statistics.median(x["seconds"] for x in r["new"]) / statistics.median(x["seconds"] for x in r["old"])
              for lab, r in by.items() if r.get("new") and r.get("old")}
    if ratios:
        lo, hi = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
        print(f"call time new / old: median {statistics.median(ratios.values()):.3f} over {len(ratios)} cells, "
              f"lowest {ratios[lo]:.3f} ({lo}), highest {ratios[hi]:.3f} ({hi})")


if __name__ == "__main__":
    main()
