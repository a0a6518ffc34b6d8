"""Interleaved runs and their spread: what every comparison in `make bench` prints.

A figure from one run on a shared 2-core machine says little (the same ratio moved from 0.11 to 0.30
between runs), so each side of a comparison runs RUNS times, in turn (firmware, peer, firmware, peer,
...), each measurement printed as it comes; then min / median / max per side and the ratio of medians.
"""
import statistics

RUNS = 5


def progress(what, text):
    print("  %s: %s" % (what, text), flush=True)


class Failed(Exception):
    """A run that could not be measured (the reason is printed and the run left out)."""


def interleaved(what, sides, runs=RUNS, fmt="%.1f"):
    """sides: [(name, measure)], measure() -> a number, or raises Failed (the run is left out) or
    SystemExit (the benchmark stops). Runs every side once per round, `runs` rounds; returns
    {name: [values]} in the sides' order."""
    got = {name: [] for name, _ in sides}
    for r in range(1, runs + 1):
        for name, measure in sides:
            try:
                v = measure()
            except Failed as e:
                progress(what, "run %d/%d, %s: FAILED: %s" % (r, runs, name, e))
                continue
            got[name].append(v)
            progress(what, "run %d/%d, %s: %s" % (r, runs, name, fmt % v))
    return got


def spread(values, fmt="%.1f"):
    """'median (min..max)'."""
    return "%s (%s..%s)" % (fmt % statistics.median(values), fmt % min(values), fmt % max(values))


def table(title, unit, results, fmt="%.1f", label=34, runs=RUNS):
    """min / median / max per side (a side with fewer than `runs` values says how many it has)."""
    if title:
        print(title)
    print("  %-*s %10s %10s %10s  %s" % (label, "", "min", "median", "max", unit))
    for name, values in results.items():
        if not values:
            print("  %-*s %10s %10s %10s  every run failed" % (label, name, "-", "-", "-"))
            continue
        print("  %-*s %10s %10s %10s%s" % (label, name, fmt % min(values), fmt % statistics.median(values),
                                           fmt % max(values), "" if len(values) == runs else
                                           "  (%d runs measured)" % len(values)))


def ratio(a, b, results, note=""):
    """Print and return the ratio of a's median to b's (None when either side has no measurement)."""
    if not results[a] or not results[b]:
        print("  ratio of medians, %s / %s: none (a side has no measurement)" % (a, b))
        return None
    r = statistics.median(results[a]) / statistics.median(results[b])
    print("  ratio of medians, %s / %s: %.2fx%s" % (a, b, r, " " + note if note else ""))
    return r
