"""Hand-made mutations of the decision paths, each run against the reference decider.

    python tools/hand_mutations.py [NAME ...]      (make hand-mutations)

Each mutation changes one line of one decision path — the compiled walk, the array
store's kernel, the scalar live path, the one-call walk's reading of a reply, the Lua
scripts the live Redis path runs — in a copy of the package, then runs
``tests/decide/test_reference.py`` (every path × store × routing method against
:mod:`router.reference`, on Hypothesis-made streams) on the stores and paths that run the
mutated code. A mutation the reference test does not catch is a hole in it: the script
exits non-zero and names it. Needs ``redis-server`` on the PATH for the Redis mutations
(the test starts its own throwaway server, as ``make test`` does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutation(NamedTuple):
    name: str
    file: str  # under router/
    old: str  # must occur exactly once
    new: str
    select: str  # pytest -k expression: the stores and paths that run this code
    what: str


MUTATIONS = [
    Mutation(
        "kernel-count-cap",
        "store/kernel.py",
        "cnt >= sl[s, CAP_COUNT]",
        "cnt > sl[s, CAP_COUNT]",
        "array and batch",
        "the array store grants one more than a count cap",
    ),
    Mutation(
        "kernel-dedupe",
        "store/kernel.py",
        "t - last < bk[b, DEDUPE_MS]",
        "t - last < 0",
        "array and batch",
        "the array store never refuses a repeat applicant inside the dedupe window",
    ),
    Mutation(
        "compiled-best-value-order",
        "decide/walk_compiled.py",
        "before = ev[i, j] > ev[i, o] or",
        "before = ev[i, j] < ev[i, o] or",
        "array and batch and best_value",
        "the compiled walk tries the least valuable partner first",
    ),
    Mutation(
        "compiled-weighted-charge",
        "decide/walk_compiled.py",
        "if routing[0] == WEIGHTED:",
        "if routing[0] == -1:",
        "array and batch and weighted",
        "the compiled walk never charges the weighted rotation on a grant",
    ),
    Mutation(
        "scalar-no-eligible-reason",
        "decide/assess_one.py",
        "if live and any_consent and not any_eligible:",
        "if live and not any_eligible:",
        "one and memory",
        "the scalar path gives NO_ELIGIBLE_PARTNER to applicants who gave no consent",
    ),
    Mutation(
        "scalar-refusal-reason",
        "decide/allocate_row.py",
        "extra |= DEDUPE if res == DEDUPED else LATE_BIT if res == LATE else QUOTA",
        "extra |= QUOTA",
        "one and memory",
        "the scalar step walk reports a dedupe refusal as a full quota",
    ),
    Mutation(
        "one-call-settle-reason",
        "decide/walk_one_call.py",
        "bits |= LATE_BIT if code == LATE else DEDUPE if code == DEDUPED else step.cap_bit",
        "bits |= LATE_BIT if code == LATE else step.cap_bit",
        "one and redis and not cluster",
        "reading a one-call walk's reply, a dedupe refusal is reported as a full cap",
    ),
    Mutation(
        "lua-decide-count-cap",
        "store/lua/decide.lua",
        "if cl >= 0 and cnt + 1 > cl then",
        "if cl >= 0 and cnt > cl then",
        "one and redis and not cluster",
        "the decide script grants one more than a count cap",
    ),
    Mutation(
        "lua-decide-dedupe",
        "store/lua/decide.lua",
        "if l ~= nil and now - l < dedupe_ms then return 1 end",
        "if l ~= nil and now - l < 0 then return 1 end",
        "one and redis and not cluster",
        "the decide script never refuses a repeat applicant inside the dedupe window",
    ),
    Mutation(
        "lua-decide-stored-reasons",
        "store/lua/decide.lua",
        "    acc = bit.bor(acc, cap_bit)\n",
        "    acc = bit.bor(acc, 0)\n",
        "one and redis and not cluster",
        "the decide script stores a grant's record without the cap refusals before it "
        "(a retry is answered with other reasons)",
    ),
    Mutation(
        "lua-reserve-amount-cap",
        "store/lua/reserve.lua",
        "if al >= 0 and a + amount > al then",
        "if al >= 0 and a > al then",
        "batch and redis",
        "the reservation script lets an amount cap be overrun by the last grant",
    ),
]


def run(m: Mutation, workdir: Path) -> tuple[bool, float, str]:
    """(caught, seconds, last lines of pytest's output) for one mutation."""
    copy = workdir / m.name
    shutil.copytree(ROOT / "router", copy / "router", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    for d in ("configs", "models"):
        shutil.copytree(ROOT / d, copy / d)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "router" / m.file
    text = target.read_text()
    found = text.count(m.old)
    if found != 1:
        raise SystemExit(f"{m.name}: expected one {m.old!r} in router/{m.file}, found {found}")
    target.write_text(text.replace(m.old, m.new))
    # The copy's package first on the path: the installed (editable) one is not used.
    env = {**os.environ, "PYTHONPATH": str(copy), "NUMBA_CACHE_DIR": str(copy / ".numba")}
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         "tests/decide/test_reference.py", "-k", m.select],
        cwd=copy, env=env, capture_output=True, text=True,
    )  # fmt: skip
    took = time.perf_counter() - t
    out = (p.stdout + p.stderr).strip().splitlines()
    if p.returncode == 5:
        raise SystemExit(f"{m.name}: -k {m.select!r} selects no test")
    return p.returncode != 0, took, "\n".join(out[-3:])


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    missed = []
    with tempfile.TemporaryDirectory(prefix="hand-mutations-") as tmp:
        for m in chosen:
            caught, took, tail = run(m, Path(tmp))
            verdict = "caught" if caught else "MISSED"
            print(f"{verdict:7s} {m.name:28s} {took:6.1f} s  {m.what}", flush=True)
            if not caught:
                missed.append(m.name)
                print("        " + tail.replace("\n", "\n        "), flush=True)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} hand-made mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
