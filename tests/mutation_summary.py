"""`make mutation`'s last step: the mutants of the scope that were not killed, then counts per module.

    .venv/bin/mutmut results --all=true | python tests/mutation_summary.py [PATTERN ...]

PATTERNs are the fnmatch patterns of the run's scope (none: every mutant). Survival rate = survived /
tested, where "not checked" and "no tests" mutants count as untested.
"""

import collections
import fnmatch
import re
import sys

# mutmut names a mutant <module>.x_<function>__mutmut_N or <module>.xǁ<class>ǁ<method>__mutmut_N
MODULE = re.compile(r"^replication\.(.+?)\.x[_ǁ]")


def module_of(name: str) -> str:
    """The module of a mutant, without the package's name: ``science.gapt``."""
    found = MODULE.match(name)
    return found.group(1) if found else name.rsplit(".", 1)[0]


def main(scope: list[str]) -> None:
    rows = [line.strip().rsplit(": ", 1) for line in sys.stdin if ": " in line]
    rows = [
        (name, status) for name, status in rows if not scope or any(fnmatch.fnmatch(name, p) for p in scope)
    ]
    for name, status in sorted(rows):
        if status != "killed":
            print(f"  {status:12} {name}")
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in rows:
        counts[module_of(name)][status] += 1
        counts["all"][status] += 1
    print(f"\n{'module':22} {'mutants':>8} {'killed':>8} {'survived':>9} {'other':>6} {'survival':>9}")
    for module in sorted(counts, key=lambda m: (m == "all", m)):
        c = counts[module]
        n = sum(c.values())
        tested = n - c["no tests"] - c["not checked"]
        rate = f"{100 * c['survived'] / tested:.1f} %" if tested else "-"
        print(
            f"{module:22} {n:8} {c['killed']:8} {c['survived']:9} "
            f"{n - c['killed'] - c['survived']:6} {rate:>9}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
