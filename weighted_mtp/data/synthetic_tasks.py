"""Parameterised problem families for the synthetic verifiable task set.

Each family maps a seeded ``random.Random`` to a :class:`Problem`: a short formulaic
statement, test inputs, a reference solver, 1-2 correct programs (3-10 lines) and
family-specific buggy programs (generic mutations are added in ``synthetic.py``).
Difficulty grows with the program's structure: 1-3 one-line arithmetic / IO,
4-7 loops, conditions and strings, 8-11 sorting, dynamic programming, multi-step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

READ_LIST = "n = int(input())\na = list(map(int, input().split()))\n"
# Constants in statements have at most two digits: the micro policy has to copy them from
# the statement into its program, which it learns within setup's pretraining budget for
# two digits and not for three (docs/comparing.md, "The demo").
C_MAX = 99


@dataclass
class Problem:
    family: str
    difficulty: int
    params: dict[str, object]
    statement: str
    solutions: list[str]
    inputs: list[str]  # the first two are the shown examples
    solve: Callable[[str], str]
    bugs: list[tuple[str, str]] = field(default_factory=list)  # (kind, program)

    @property
    def problem_id(self) -> str:
        return self.family + ":" + ",".join(f"{k}={v}" for k, v in self.params.items())


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def _list_inputs(rng: Random, lo: int, hi: int, k: int = 6, special: tuple = ()) -> list[str]:
    """Inputs 'n' + 'n integers'; ``special`` values are mixed in (edge cases)."""
    out = []
    for i in range(k):
        n = 1 if i == k - 1 else rng.randint(2, 8)
        vals = [rng.randint(lo, hi) for _ in range(n)]
        if special and i % 2 == 0:
            vals[rng.randrange(n)] = rng.choice(special)
        out.append(f"{n}\n{' '.join(map(str, vals))}\n")
    return out


def _second(text: str) -> list[int]:
    return _ints(text.split("\n", 1)[1])


def affine(rng: Random) -> Problem:
    op, c = rng.choice(["+", "-", "*"]), rng.randint(2, C_MAX)
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    ins = [f"{rng.randint(-50, 200)}\n" for _ in range(6)]
    return Problem(
        "affine",
        1,
        {"op": op, "c": c},
        f"Read an integer n. Print n {word} {c}.",
        [f"n = int(input())\nprint(n {op} {c})\n"],
        ins,
        lambda t: str(eval(f"{int(t)} {op} {c}")),
    )


def two_lin(rng: Random) -> Problem:
    x, y, op = rng.randint(1, 30), rng.randint(1, 30), rng.choice(["+", "-"])
    ins = [f"{rng.randint(-20, 50)} {rng.randint(-20, 50)}\n" for _ in range(6)]
    return Problem(
        "two_lin",
        2,
        {"x": x, "op": op, "y": y},
        f"Read two integers a and b on one line. Print {x} * a {op} {y} * b.",
        [f"a, b = map(int, input().split())\nprint({x} * a {op} {y} * b)\n"],
        ins,
        lambda t: str(eval(f"{x} * {_ints(t)[0]} {op} {y} * ({_ints(t)[1]})")),
    )


def divmod_(rng: Random) -> Problem:
    k, rev = rng.randint(2, C_MAX), rng.random() < 0.5
    order = "the remainder and then the quotient" if rev else "the quotient and the remainder"
    expr = f"n % {k}, n // {k}" if rev else f"n // {k}, n % {k}"
    ins = [f"{rng.randint(0, 1000)}\n" for _ in range(5)] + [f"{k - 1}\n"]
    return Problem(
        "divmod",
        3,
        {"k": k, "rev": int(rev)},
        f"Read a non-negative integer n. Divide n by {k} and print {order}, separated by a space.",
        [f"n = int(input())\nprint({expr})\n"],
        ins,
        lambda t: " ".join(map(str, divmod(int(t), k)[:: -1 if rev else 1])),
    )


def max3(rng: Random) -> Problem:
    fn, c = rng.choice(["max", "min"]), rng.randint(0, C_MAX)
    word = "largest" if fn == "max" else "smallest"
    ins = [" ".join(str(rng.randint(-30, 30)) for _ in range(3)) + "\n" for _ in range(6)]
    return Problem(
        "max3",
        3,
        {"fn": fn, "c": c},
        f"Read three integers on one line. Print the {word} of them plus {c}.",
        [f"x, y, z = map(int, input().split())\nprint({fn}(x, y, z) + {c})\n"],
        ins,
        lambda t: str((max if fn == "max" else min)(_ints(t)) + c),
    )


def divisible(rng: Random) -> Problem:
    k, neg = rng.randint(2, C_MAX), rng.random() < 0.5
    cond = f"n % {k} != 0" if neg else f"n % {k} == 0"
    what = "not divisible" if neg else "divisible"
    ins = [f"{rng.randint(0, 500)}\n" for _ in range(4)] + [f"{k * 3}\n", f"{k + 1}\n"]
    return Problem(
        "divisible",
        4,
        {"k": k, "neg": int(neg)},
        f"Read an integer n. Print YES if n is {what} by {k}, otherwise print NO.",
        [f'n = int(input())\nif {cond}:\n    print("YES")\nelse:\n    print("NO")\n'],
        ins,
        lambda t: "YES" if (int(t) % k != 0) == neg else "NO",
    )


def sum_scaled(rng: Random) -> Problem:
    op, c = rng.choice(["+", "*", "-"]), rng.randint(1, C_MAX)
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    loop = f"{READ_LIST}s = 0\nfor x in a:\n    s += x\nprint(s {op} {c})\n"
    return Problem(
        "sum_scaled",
        4,
        {"op": op, "c": c},
        f"The first line contains n, the second line n integers. "
        f"Print the sum of the integers {word} {c}.",
        [loop, f"{READ_LIST}print(sum(a) {op} {c})\n"],
        _list_inputs(rng, -20, 50),
        lambda t: str(eval(f"{sum(_second(t))} {op} {c}")),
    )


_CMP = {">": "greater than", "<": "less than", ">=": "at least", "<=": "at most"}


def count_cmp(rng: Random) -> Problem:
    cmp, k = rng.choice(list(_CMP)), rng.randint(-C_MAX, C_MAX)
    loop = f"{READ_LIST}c = 0\nfor x in a:\n    if x {cmp} {k}:\n        c += 1\nprint(c)\n"
    return Problem(
        "count_cmp",
        5,
        {"cmp": cmp, "k": k},
        "The first line contains n, the second line n integers. "
        f"Print how many of the integers are {_CMP[cmp]} {k}.",
        [loop, f"{READ_LIST}print(sum(1 for x in a if x {cmp} {k}))\n"],
        _list_inputs(rng, k - 8, k + 8, special=(k,)),
        lambda t: str(sum(1 for x in _second(t) if eval(f"{x} {cmp} {k}"))),
    )


def _words(rng: Random, letters: str, k: int = 6) -> list[str]:
    return [
        "".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) + "\n" for _ in range(k)
    ]


def char_count(rng: Random) -> Problem:
    ch, other = rng.choice("abcdefghijklmnopqrstuvwxyz"), rng.random() < 0.5
    c = rng.randint(0, 40)
    expr = f'len(s) - s.count("{ch}")' if other else f's.count("{ch}")'
    what = f"of its letters are not '{ch}'" if other else f"times the letter '{ch}' appears in it"
    return Problem(
        "char_count",
        5,
        {"ch": ch, "other": int(other), "c": c},
        f"Read a string of lowercase letters. Let k be how many {what}. Print k plus {c}.",
        [f"s = input()\nprint({expr} + {c})\n"],
        _words(rng, ch * 3 + "abcxyz"),
        lambda t: str((len(t.strip()) - t.count(ch) if other else t.count(ch)) + c),
    )


def string_map(rng: Random) -> Problem:
    c, d = rng.sample("abcdefghijklmnopqrstuvwxyz", 2)
    rev = rng.random() < 0.5
    tail = ", reversed" if rev else ""
    return Problem(
        "string_map",
        6,
        {"c": c, "d": d, "rev": int(rev)},
        f"Read a string of lowercase letters. Replace every '{c}' with '{d}' and print the "
        f"result{tail}.",
        [f's = input()\nprint(s.replace("{c}", "{d}"){"[::-1]" if rev else ""})\n'],
        _words(rng, c * 3 + d + "mnop"),
        lambda t: t.strip().replace(c, d)[:: -1 if rev else 1],
        [
            (
                "wrong_operator",
                f's = input()\nprint(s.replace("{d}", "{c}"){"[::-1]" if rev else ""})\n',
            )
        ],
    )


def multiples(rng: Random) -> Problem:
    k, desc = rng.randint(2, C_MAX), rng.random() < 0.5
    rng_expr = "range(n, 0, -1)" if desc else "range(1, n + 1)"
    order = "decreasing" if desc else "increasing"
    body = f"r = []\nfor i in {rng_expr}:\n    if i % {k} == 0:\n        r.append(i)\n"
    printing = 'if r:\n    print(" ".join(map(str, r)))\nelse:\n    print("NONE")\n'
    full = f"n = int(input())\n{body}{printing}"
    ins = [f"{rng.randint(k, 6 * k)}\n" for _ in range(4)] + [f"{k}\n", f"{k - 1}\n"]

    def solve(t: str) -> str:
        r = [i for i in range(1, int(t) + 1) if i % k == 0][:: -1 if desc else 1]
        return " ".join(map(str, r)) if r else "NONE"

    return Problem(
        "multiples",
        6,
        {"k": k, "desc": int(desc)},
        f"Read an integer n. Print the numbers from 1 to n that are divisible by {k} in "
        f"{order} order, separated by spaces. If there are none, print NONE.",
        [full],
        ins,
        solve,
        [("missing_edge_case", f'n = int(input())\n{body}print(" ".join(map(str, r)))\n')],
    )


def digit_sum(rng: Random) -> Problem:
    op, c = rng.choice(["+", "*"]), rng.randint(1, C_MAX)
    word = "plus" if op == "+" else "times"
    loop = (
        f"n = int(input())\ns = 0\nwhile n > 0:\n    s += n % 10\n    n //= 10\nprint(s {op} {c})\n"
    )
    alt = f"s = input()\nprint(sum(int(ch) for ch in s) {op} {c})\n"
    ins = [f"{rng.randint(0, 99999)}\n" for _ in range(5)] + ["0\n"]
    return Problem(
        "digit_sum",
        6,
        {"op": op, "c": c},
        f"Read a non-negative integer n. Print the sum of its digits {word} {c}.",
        [loop, alt],
        ins,
        lambda t: str(eval(f"{sum(map(int, t.strip()))} {op} {c}")),
    )
