#!/usr/bin/env python3
"""Recomputes a report's significance.csv with scipy and statsmodels.

Usage: check_significance.py REPORT_DIR/significance.csv

For every pair: the exact two-sided McNemar p-value (a binomial test of
a_only successes in a_only + b_only trials at 1/2) and, per task, Holm's
adjustment across the task's pairs. Prints the largest differences from
slmbench's columns and exits 1 when one exceeds 1e-9.
"""
import csv
import sys
from collections import defaultdict

from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests


def main(path):
    rows = list(csv.DictReader(open(path, newline="")))
    if not rows:
        print("no pairs")
        return 0
    by_task = defaultdict(list)
    worst_p = worst_holm = 0.0
    for r in rows:
        a, b = int(r["a_only"]), int(r["b_only"])
        p = 1.0 if a + b == 0 else binomtest(a, a + b, 0.5).pvalue
        worst_p = max(worst_p, abs(p - float(r["p"])))
        by_task[r["task"]].append((r, p))
    for task, items in by_task.items():
        adjusted = multipletests([p for _, p in items], method="holm")[1]
        for (r, _), h in zip(items, adjusted):
            worst_holm = max(worst_holm, abs(h - float(r["p_holm"])))
    print(f"{len(rows)} pairs in {len(by_task)} tasks: max |p - scipy| = {worst_p:.3g}, "
          f"max |p_holm - statsmodels| = {worst_holm:.3g}")
    return 0 if max(worst_p, worst_holm) <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
