"""Policy decision cost: plain pycasbin vs endpointsec's CasbinPolicy.

Run:  .venv/bin/python bench/policy_bench.py [--sizes 10,1000,100000] [--quick]

Policies are generated with the shipped default model: N policy lines spread over
services (SPIFFE IDs) and roles, keyMatch2 templates (``/api/svcK/resJ/:id``), allow and
deny rules, and up to 200 ``g`` lines giving services a role. Requests:

* ``allow``: a service calling one of its own templates (a rule matches);
* ``deny``:  the same service on a path no rule covers (Casbin scans everything);
* ``3-subj``: peer + request principal + ``role:`` subject, through CasbinPolicy only
  (pycasbin has no multi-subject call: it would be three calls).

"uncached" is CasbinPolicy with ``cache_size=0`` (the rule index and the role
closures are still used); "cached" repeats one request. Figures are medians of
several rounds, in microseconds per decision. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import casbin

from endpointsec.policy import DEFAULT_MODEL_PATH, CasbinPolicy

RULES_PER_SERVICE = 10
#: pycasbin's domain role manager is quadratic in the names it meets on its first call
#: (every new role scans all known roles): with 10k g lines the first call took over
#: 250 s here, so g lines are capped to keep pycasbin measurable.
MAX_G_LINES = 200


def write_policy(path: Path, n: int) -> tuple[str, str]:
    """Write ~n p lines (+ g lines); return (subject, its first template's object)."""
    services = max(1, n // RULES_PER_SERVICE)
    lines: list[str] = []
    for k in range(services):
        sub = f"spiffe://example.org/ns/ns{k}/sa/svc{k}"
        for j in range(RULES_PER_SERVICE):
            if len(lines) >= n:
                break
            method = "GET" if j % 2 == 0 else "POST"
            eft = "deny" if j == RULES_PER_SERVICE - 1 else "allow"
            lines.append(f"p, {sub}, *, /api/svc{k}/res{j}/:id, {method}, {eft}")
        if k % max(1, services // MAX_G_LINES) == 0:
            lines.append(f"g, {sub}, role{k % 50}, *")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mid = services // 2
    return f"spiffe://example.org/ns/ns{mid}/sa/svc{mid}", f"/api/svc{mid}/res0/42"


def per_call_us(fn: Callable[[], object], *, budget_s: float, rounds: int = 5) -> float:
    """Median microseconds per call, spending about ``budget_s`` in total
    (``budget_s=0``: one call per round, no calibration call)."""
    loops = 1
    if budget_s > 0:
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        loops = max(1, int(budget_s / rounds / once))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops * 1e6)
    return statistics.median(samples)


def measure(n: int, tmp: Path, budget: float) -> tuple[tuple[str, ...], dict[str, float]]:
    """Load an n-line policy both ways and time each kind of decision."""
    csv = tmp / f"policy-{n}.csv"
    sub, obj = write_policy(csv, n)
    deny_obj = "/nowhere/1"
    three = [sub, "https://issuer.example#alice", "role:reader"]

    t0 = time.perf_counter()
    plain = casbin.Enforcer(str(DEFAULT_MODEL_PATH), str(csv))
    plain_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = CasbinPolicy(policy=csv, cache_size=0)
    ours_load = time.perf_counter() - t0
    cached = CasbinPolicy(policy=csv)

    # Same answers first. This is also pycasbin's first call, which is far slower than
    # the next ones at 100k lines (about 44 s here: its role manager meets 10k subject
    # names, quadratically); it is not part of the figures.
    if not (plain.enforce(sub, "*", obj, "GET")
            and ours.evaluate(subjects=[sub], resource=obj, action="GET").allowed):
        raise SystemExit(f"{n} lines: expected an allow")
    if (plain.enforce(sub, "*", deny_obj, "GET")
            or ours.evaluate(subjects=[sub], resource=deny_obj, action="GET").allowed):
        raise SystemExit(f"{n} lines: expected a deny")

    # pycasbin is linear in policy size: a few calls are enough at 100k lines.
    big = n > 10_000
    plain_budget, plain_rounds = (0.0, 2) if big else (budget, 5)
    figures = {
        "pycasbin allow": per_call_us(lambda: plain.enforce(sub, "*", obj, "GET"),
                                      budget_s=plain_budget, rounds=plain_rounds),
        "pycasbin deny": per_call_us(lambda: plain.enforce(sub, "*", deny_obj, "GET"),
                                     budget_s=plain_budget, rounds=plain_rounds),
        "ours allow (uncached)": per_call_us(
            lambda: ours.evaluate(subjects=[sub], resource=obj, action="GET"),
            budget_s=budget),
        "ours deny (uncached)": per_call_us(
            lambda: ours.evaluate(subjects=[sub], resource=deny_obj, action="GET"),
            budget_s=budget),
        "ours 3-subj (uncached)": per_call_us(
            lambda: ours.evaluate(subjects=three, resource=obj, action="GET"),
            budget_s=budget),
        "ours cached": per_call_us(
            lambda: cached.evaluate(subjects=three, resource=obj, action="GET"),
            budget_s=budget),
    }
    row = (f"{n:,}", f"{plain_load:.2f}s", f"{ours_load:.2f}s",
           *(f"{v:,.2f}" for v in figures.values()))
    return row, figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,100000")
    ap.add_argument("--quick", action="store_true", help="smaller time budget per figure")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    budget = 0.2 if args.quick else 0.6
    rows: list[tuple[str, ...]] = []
    results: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            row, figures = measure(n, Path(tmp), budget)
            rows.append(row)
            for name, us in figures.items():
                results[(name, n)] = us
            print(f"  measured {n:,} lines", file=sys.stderr)

    header = ("lines", "load casbin", "load ours", "pycasbin allow", "pycasbin deny",
              "ours allow", "ours deny", "ours 3-subj", "ours cached")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("decision cost in microseconds (median); load in seconds")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    lo, hi = min(sizes), max(sizes)
    if lo != hi:
        print()
        for name in ("ours allow (uncached)", "ours deny (uncached)", "ours 3-subj (uncached)"):
            ratio = results[(name, hi)] / results[(name, lo)]
            print(f"{name}: {hi:,} lines / {lo:,} lines = {ratio:.2f}x (target <= 3x)")
        print(f"ours cached at {hi:,} lines: {results[('ours cached', hi)]:.2f} us "
              "(target <= 3 us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
