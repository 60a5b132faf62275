"""Harder synthetic families (difficulty 7-11): lists, sorting, dynamic programming."""

from __future__ import annotations

from random import Random

from weighted_mtp.data.synthetic_tasks import (
    C_MAX,
    READ_LIST,
    Problem,
    _list_inputs,
    _second,
    affine,
    char_count,
    count_cmp,
    digit_sum,
    divisible,
    divmod_,
    max3,
    multiples,
    string_map,
    sum_scaled,
    two_lin,
)

LIST_INTRO = "The first line contains n, the second line n integers. "


def max_index(rng: Random) -> Problem:
    fn, last, base = rng.choice(["max", "min"]), rng.random() < 0.5, rng.randint(0, 99)
    cmp = {("max", False): ">", ("max", True): ">=", ("min", False): "<", ("min", True): "<="}
    word = "largest" if fn == "max" else "smallest"
    which = "last" if last else "first"
    loop = (
        f"{READ_LIST}b = 0\nfor i in range(1, n):\n    if a[i] {cmp[fn, last]} a[b]:\n"
        f"        b = i\nprint(b + {base})\n"
    )

    def solve(t: str) -> str:
        a = _second(t)
        best = (max if fn == "max" else min)(a)
        pos = [i for i, x in enumerate(a) if x == best]
        return str((pos[-1] if last else pos[0]) + base)

    return Problem(
        "max_index",
        7,
        {"fn": fn, "last": int(last), "base": base},
        f"{LIST_INTRO}Print the position (counting from {base}) of the {word} integer. If it "
        f"appears several times, print its {which} position.",
        [loop],
        _list_inputs(rng, -5, 5),
        solve,
    )


def distinct_div(rng: Random) -> Problem:
    k, neg = rng.randint(2, C_MAX), rng.random() < 0.5
    cond = f"x % {k} != 0" if neg else f"x % {k} == 0"
    what = "not divisible" if neg else "divisible"
    return Problem(
        "distinct_div",
        7,
        {"k": k, "neg": int(neg)},
        f"{LIST_INTRO}Print how many distinct values among them are {what} by {k}.",
        [
            f"{READ_LIST}print(len(set(x for x in a if {cond})))\n",
            f"{READ_LIST}s = set()\nfor x in a:\n    if {cond}:\n        s.add(x)\nprint(len(s))\n",
        ],
        _list_inputs(rng, 0, 3 * k, special=(k, 2 * k, 1)),
        lambda t: str(len({x for x in _second(t) if (x % k != 0) == neg})),
        [("missing_edge_case", f"{READ_LIST}print(len([x for x in a if {cond}]))\n")],
    )


def topk(rng: Random) -> Problem:
    k, desc, c = rng.randint(1, 8), rng.random() < 0.5, rng.randint(0, 60)
    sort = "a.sort(reverse=True)" if desc else "a.sort()"
    order = "non-increasing" if desc else "non-decreasing"
    return Problem(
        "topk",
        8,
        {"k": k, "desc": int(desc), "c": c},
        f"{LIST_INTRO}Sort them in {order} order and print the first {k} of them plus {c} "
        f"each, separated by spaces (all of them if there are fewer than {k}).",
        [f'{READ_LIST}{sort}\nprint(" ".join(str(x + {c}) for x in a[:{k}]))\n'],
        _list_inputs(rng, -20, 40),
        lambda t: " ".join(str(x + c) for x in sorted(_second(t), reverse=desc)[:k]),
    )


def second_value(rng: Random) -> Problem:
    big, c = rng.random() < 0.5, rng.randint(0, C_MAX)
    pick = "a[-2]" if big else "a[1]"
    word = "second largest" if big else "second smallest"
    src = (
        "n = int(input())\na = sorted(set(map(int, input().split())))\n"
        f'if len(a) < 2:\n    print("NONE")\nelse:\n    print({pick} + {c})\n'
    )

    def solve(t: str) -> str:
        a = sorted(set(_second(t)))
        return "NONE" if len(a) < 2 else str((a[-2] if big else a[1]) + c)

    ins = _list_inputs(rng, -9, 9)
    ins[1] = "3\n4 4 4\n"
    return Problem(
        "second_value",
        8,
        {"big": int(big), "c": c},
        f"{LIST_INTRO}Print the {word} distinct value plus {c}, or NONE if there are fewer "
        "than two distinct values.",
        [src],
        ins,
        solve,
        [
            (
                "missing_edge_case",
                f"n = int(input())\na = sorted(map(int, input().split()))\n"
                f'if len(a) < 2:\n    print("NONE")\nelse:\n    print({pick} + {c})\n',
            )
        ],
    )


def fib_mod(rng: Random) -> Problem:
    x0, x1, m = rng.randint(0, 5), rng.randint(1, 5), rng.randint(7, C_MAX)
    src = (
        f"n = int(input())\nx, y = {x0}, {x1}\nfor _ in range(n):\n"
        f"    x, y = y, (x + y) % {m}\nprint(x % {m})\n"
    )

    def solve(t: str) -> str:
        x, y = x0, x1
        for _ in range(int(t)):
            x, y = y, (x + y) % m
        return str(x % m)

    return Problem(
        "fib_mod",
        9,
        {"x0": x0, "x1": x1, "m": m},
        f"Let f(0) = {x0}, f(1) = {x1} and f(i) = f(i - 1) + f(i - 2). Read n and print "
        f"f(n) modulo {m}.",
        [src],
        [f"{rng.randint(2, 60)}\n" for _ in range(5)] + ["0\n"],
        solve,
    )


def count_pairs(rng: Random) -> Problem:
    k, op = rng.randint(2, C_MAX), rng.choice(["+", "-"])
    word = "sum" if op == "+" else "difference"
    src = (
        f"{READ_LIST}c = 0\nfor i in range(n):\n    for j in range(i + 1, n):\n"
        f"        if (a[i] {op} a[j]) % {k} == 0:\n            c += 1\nprint(c)\n"
    )

    def solve(t: str) -> str:
        a = _second(t)
        n = len(a)
        return str(
            sum(
                1 for i in range(n) for j in range(i + 1, n) if eval(f"{a[i]} {op} {a[j]}") % k == 0
            )
        )

    return Problem(
        "count_pairs",
        9,
        {"k": k, "op": op},
        f"{LIST_INTRO}Print how many pairs of positions i < j have a {word} a[i] {op} a[j] "
        f"divisible by {k}.",
        [src],
        _list_inputs(rng, 0, 3 * k),
        solve,
    )


def stairs(rng: Random) -> Problem:
    k, m = rng.randint(2, 6), rng.randint(10, C_MAX)
    src = (
        f"n = int(input())\nw = [1] + [0] * n\nfor i in range(1, n + 1):\n"
        f"    for j in range(1, {k} + 1):\n        if i >= j:\n"
        f"            w[i] = (w[i] + w[i - j]) % {m}\nprint(w[n])\n"
    )

    def solve(t: str) -> str:
        n = int(t)
        w = [1] + [0] * n
        for i in range(1, n + 1):
            w[i] = sum(w[max(0, i - k) : i]) % m
        return str(w[n])

    return Problem(
        "stairs",
        10,
        {"k": k, "m": m},
        f"Count the ways to climb n stairs taking between 1 and {k} steps at a time. Read n "
        f"and print the count modulo {m}.",
        [src],
        [f"{rng.randint(3, 40)}\n" for _ in range(5)] + ["1\n"],
        solve,
    )


def window(rng: Random) -> Problem:
    k, fn, c = rng.randint(2, 12), rng.choice(["max", "min"]), rng.randint(0, 40)
    word = "largest" if fn == "max" else "smallest"
    src = (
        f"{READ_LIST}if n < {k}:\n    print(sum(a) + {c})\nelse:\n    s = sum(a[:{k}])\n    b = s\n"
        f"    for i in range({k}, n):\n        s += a[i] - a[i - {k}]\n"
        f"        b = {fn}(b, s)\n    print(b + {c})\n"
    )

    def solve(t: str) -> str:
        a = _second(t)
        if len(a) < k:
            return str(sum(a) + c)
        sums = [sum(a[i : i + k]) for i in range(len(a) - k + 1)]
        return str((max if fn == "max" else min)(sums) + c)

    ins = [
        f"{n}\n" + " ".join(str(rng.randint(-9, 9)) for _ in range(n)) + "\n"
        for n in (k + 3, k + 1, k + 5, k, k - 1, 2 * k)
    ]
    return Problem(
        "window",
        11,
        {"k": k, "fn": fn, "c": c},
        f"{LIST_INTRO}Print the {word} sum of {k} consecutive integers plus {c}. If n < {k}, "
        f"print the sum of all of them plus {c}.",
        [src],
        ins,
        solve,
    )


def max_subarray(rng: Random) -> Problem:
    c, fn = rng.randint(-99, 99), rng.choice(["max", "min"])
    add = f"+ {c}" if c >= 0 else f"- {-c}"
    word = "largest" if fn == "max" else "smallest"
    src = (
        f"{READ_LIST}best = cur = a[0] {add}\nfor x in a[1:]:\n"
        f"    cur = {fn}(x {add}, cur + x {add})\n    best = {fn}(best, cur)\nprint(best)\n"
    )

    def solve(t: str) -> str:
        a = [x + c for x in _second(t)]
        sums = [sum(a[i:j]) for i in range(len(a)) for j in range(i + 1, len(a) + 1)]
        return str((max if fn == "max" else min)(sums))

    return Problem(
        "max_subarray",
        11,
        {"c": c, "fn": fn},
        f"{LIST_INTRO}Add {c} to every integer, then print the {word} sum of a non-empty "
        "block of consecutive integers.",
        [src],
        _list_inputs(rng, -12, 8),
        solve,
    )


FAMILIES = [
    affine, two_lin, divmod_, max3, divisible, sum_scaled, count_cmp, char_count,
    string_map, multiples, digit_sum, max_index, distinct_div, topk, second_value,
    fib_mod, count_pairs, stairs, window, max_subarray,
]  # fmt: skip
