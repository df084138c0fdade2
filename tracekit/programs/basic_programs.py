"""A seeded generator of short everyday functions: the loops, counters, accumulators, searches
and string and list building that real code is made of, named afresh by
`tracekit.format.vocabulary`.

Where `tracekit.programs.synthetic` writes long random bodies (constant loop
bounds), these are a dozen lines at most whose control flow depends on the arguments: a loop
runs `n` times, a search stops at the `target`, a branch reads the value. A model learns from
them to read the code and the state rather than to recall a template. Program i of seed s
depends on (s, i) only; every loop is bounded by its (small) arguments.
"""

from __future__ import annotations

import random

from tracekit.format.vocabulary import rename, text
from tracekit.programs.generators import distinct, entered

INTS = ("n", "k", "count", "limit", "size", "m", "steps", "times", "width", "x")
ACCUMULATORS = ("total", "acc", "result", "s", "score", "count", "value", "out")
INDEXES = ("i", "j", "idx", "step", "pos")
LISTS = ("items", "nums", "values", "data", "xs", "numbers", "scores", "arr")
ELEMENTS = ("x", "v", "item", "num", "n", "value", "a")
TEXTS = ("text", "s", "word", "name", "line", "sentence", "msg")
CHARS = ("c", "ch", "char", "letter")
WORDS = ("apple", "banana", "cherry", "hello", "world", "python", "code", "data", "tree",
         "a", "bb", "ccc", "level", "noon", "abc", "xyz", "Hello", "Mixed Case")


class _Choices:
    """One program's choices: names never repeat, constants are small."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def name(self, pool: tuple[str, ...]) -> str:
        free = [n for n in pool if n not in self.used] or [f"{pool[0]}{len(self.used)}"]
        chosen = self.rng.choice(free)
        self.used.add(chosen)
        return chosen

    def small(self, low: int = 0, high: int = 6) -> int:
        return self.rng.randint(low, high)

    def ints(self) -> str:
        return repr([self.rng.randint(-5, 12) for _ in range(self.rng.randint(0, 6))])

    def text(self) -> str:
        if self.rng.random() < 0.3:
            return repr(text(self.rng))
        words = [self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 3))]
        return repr(" ".join(words) if self.rng.random() < 0.5 else words[0])

    def int_expr(self, var: str) -> str:
        c = self.small(1, 5)
        return self.rng.choice([var, f"{var} * {c}", f"{var} + {c}", f"{var} % {c + 1}",
                                f"{var} * {var}", f"{c} - {var}"])

    def int_test(self, var: str) -> str:
        c = self.small(0, 6)
        return self.rng.choice([f"{var} % 2 == 0", f"{var} % 2 == 1", f"{var} > {c}",
                                f"{var} < {c}", f"{var} != {c}", f"{var} >= {c}"])

    def char_test(self, var: str) -> str:
        return self.rng.choice([f"{var} in 'aeiou'", f"{var}.isupper()", f"{var} == ' '",
                                f"{var}.isalpha()", f"{var} not in 'aeiou '", f"{var} > 'm'"])


def _counting(p: _Choices) -> tuple[list[str], list[str]]:
    n, acc, i = p.name(INTS), p.name(ACCUMULATORS), p.name(INDEXES)
    start = p.small(0, 2)
    if p.rng.random() < 0.5:
        loop = [f"    for {i} in range({n}):" if start == 0 else
                f"    for {i} in range({start}, {n}):"]
        bump = []
    else:
        loop = [f"    {i} = {start}", f"    while {i} < {n}:"]
        bump = [f"        {i} += 1"]
    body = [f"        {acc} += {p.int_expr(i)}"]
    if p.rng.random() < 0.4:
        body = [f"        if {p.int_test(i)}:", "    " + body[0]]
    return ([f"def f({n}):", f"    {acc} = 0", *loop, *body, *bump, f"    return {acc}"],
            [str(p.small(0, 7))])


def _bounded(p: _Choices) -> tuple[list[str], list[str]]:
    """A loop whose round count only the argument decides: up or down, by 1 or 2, < or <=."""
    n, i, acc = p.name(INTS), p.name(INDEXES), p.name(ACCUMULATORS)
    body = f"        {acc} += {p.int_expr(i)}"
    kind = p.rng.randrange(5)
    if kind == 0:  # the argument counts itself down
        body = f"        {acc} += {p.int_expr(n)}"
        loop = [f"    while {n} > 0:", body, f"        {n} -= 1"]
    elif kind == 1:
        loop = [f"    {i} = {p.small(0, 1)}", f"    while {i} <= {n}:", body,
                f"        {i} += 1"]
    elif kind == 2:
        loop = [f"    {i} = 0", f"    while {i} < {n}:", body, f"        {i} += 2"]
    elif kind == 3:
        loop = [f"    {i} = {n}", f"    while {i} > {p.small(0, 1)}:", body, f"        {i} -= 1"]
    else:
        loop = [f"    for {i} in range({n}, 0, -1):" if p.rng.random() < 0.5 else
                f"    for {i} in range(0, {n}, 2):", body]
    last = acc if kind == 4 else p.rng.choice([acc, acc, i if kind else n])
    return ([f"def f({n}):", f"    {acc} = 0", *loop, f"    return {last}"],
            [str(p.small(0, 8))])


def _filtering(p: _Choices) -> tuple[list[str], list[str]]:
    items, out, x = p.name(LISTS), p.name(("out", "result", "kept", "evens", "found")), \
        p.name(ELEMENTS)
    keep = p.rng.choice([f"{out}.append({p.int_expr(x)})", f"{out}.insert(0, {x})"])
    lines = [f"def f({items}):", f"    {out} = []", f"    for {x} in {items}:",
             f"        if {p.int_test(x)}:", f"            {keep}"]
    if p.rng.random() < 0.3:
        lines += ["        else:", f"            {out}.append(-{x})"]
    return lines + [f"    return {out}"], [p.ints()]


def _searching(p: _Choices) -> tuple[list[str], list[str]]:
    items, target, i, x = p.name(LISTS), p.name(("target", "key", "goal", "wanted")), \
        p.name(INDEXES), p.name(ELEMENTS)
    if p.rng.random() < 0.5:
        lines = [f"def f({items}, {target}):", f"    for {i}, {x} in enumerate({items}):",
                 f"        if {x} == {target}:", f"            return {i}", "    return -1"]
    else:
        best = p.name(("best", "largest", "smallest", "top"))
        op = p.rng.choice([">", "<"])
        lines = [f"def f({items}, {target}):", f"    {best} = {target}", f"    for {x} in {items}:",
                 f"        if {x} {op} {best}:", f"            {best} = {x}", f"    return {best}"]
    return lines, [p.ints(), str(p.rng.randint(-2, 8))]


def _text_loop(p: _Choices) -> tuple[list[str], list[str]]:
    text, c = p.name(TEXTS), p.name(CHARS)
    if p.rng.random() < 0.5:
        count = p.name(("count", "n", "vowels", "total", "upper"))
        lines = [f"def f({text}):", f"    {count} = 0", f"    for {c} in {text}:",
                 f"        if {p.char_test(c)}:", f"            {count} += 1",
                 f"    return {count}"]
    else:
        out = p.name(("out", "result", "res", "new"))
        change = p.rng.choice([f"{c}.upper()", f"{c} * 2", f"{c}.lower()", "'*'", f"{c} + '-'"])
        lines = [f"def f({text}):", f"    {out} = ''", f"    for {c} in {text}:",
                 f"        if {p.char_test(c)}:", f"            {out} += {change}",
                 "        else:", f"            {out} += {c}", f"    return {out}"]
    return lines, [p.text()]


def _counting_words(p: _Choices) -> tuple[list[str], list[str]]:
    text, counts, w = p.name(TEXTS), p.name(("counts", "freq", "seen", "d")), \
        p.name(("w", "word", "token", "part"))
    split = p.rng.choice(["split()", "lower().split()", "split(' ')"])
    return ([f"def f({text}):", f"    {counts} = {{}}", f"    for {w} in {text}.{split}:",
             f"        {counts}[{w}] = {counts}.get({w}, 0) + 1", f"    return {counts}"],
            [p.text()])


def _nested(p: _Choices) -> tuple[list[str], list[str]]:
    a, b = p.name(INTS), p.name(INTS)
    i, j, acc = p.name(INDEXES), p.name(INDEXES), p.name(ACCUMULATORS)
    return ([f"def f({a}, {b}):", f"    {acc} = 0", f"    for {i} in range({a}):",
             f"        for {j} in range({b}):", f"            {acc} += {i} * {j} + 1",
             f"    return {acc}"], [str(p.small(0, 3)), str(p.small(0, 3))])


def _branches(p: _Choices) -> tuple[list[str], list[str]]:
    x, label = p.name(INTS), p.name(("label", "kind", "size", "grade"))
    high, low = p.small(6, 12), p.small(1, 5)
    return ([f"def f({x}):", f"    if {x} > {high}:", f"        {label} = 'big'",
             f"    elif {x} > {low}:", f"        {label} = 'medium'", "    else:",
             f"        {label} = 'small'", f"    return {label} + ':' + str({x})"],
            [str(p.rng.randint(-3, 15))])


def _with_helper(p: _Choices) -> tuple[list[str], list[str]]:
    helper = p.rng.choice(["double", "square", "clamp", "score", "weight", "bump"])
    y = p.name(("y", "z", "t", "v"))
    items, out, x = p.name(LISTS), p.name(("out", "result", "mapped")), p.name(ELEMENTS)
    body = p.rng.choice([f"return {y} * 2", f"return {y} * {y}", f"return min({y}, 5)",
                         f"return {y} + 1 if {y} % 2 == 0 else {y} - 1"])
    return ([f"def {helper}({y}):", f"    {body}", "", "",
             f"def f({items}):", f"    {out} = []", f"    for {x} in {items}:",
             f"        {out}.append({helper}({x}))", f"    return {out}"], [p.ints()])


def _breaking(p: _Choices) -> tuple[list[str], list[str]]:
    items, total, x = p.name(LISTS), p.name(ACCUMULATORS), p.name(ELEMENTS)
    jump = p.rng.choice(["break", "continue"])
    return ([f"def f({items}):", f"    {total} = 0", f"    for {x} in {items}:",
             f"        if {p.int_test(x)}:", f"            {jump}", f"        {total} += {x}",
             f"    return {total}"], [p.ints()])


def _swapping(p: _Choices) -> tuple[list[str], list[str]]:
    a, b, n = p.name(("a", "x", "lo", "first")), p.name(("b", "y", "hi", "second")), \
        p.name(INTS)
    i = p.name(INDEXES)
    return ([f"def f({a}, {b}, {n}):", f"    for {i} in range({n}):",
             f"        {a}, {b} = {b}, {a} + {b}", f"    return {a}"],
            [str(p.small(0, 3)), str(p.small(1, 3)), str(p.small(0, 6))])


def _list_methods(p: _Choices) -> tuple[list[str], list[str]]:
    items, x = p.name(LISTS), p.name(ELEMENTS)
    steps = p.rng.sample([f"{items}.append({p.small()})", f"{items}.sort()",
                          f"{items}.reverse()", f"{x} = {items}.pop() if {items} else 0",
                          f"{items} = {items}[1:]", f"{items}.insert(0, {p.small()})",
                          f"{items} = {items} + [{p.small()}]", f"{items}.extend([{p.small()}])"],
                         p.rng.randint(2, 4))
    return ([f"def f({items}):", f"    {x} = 0", *("    " + s for s in steps),
             f"    return {items}, {x}"], [p.ints()])


def _string_methods(p: _Choices) -> tuple[list[str], list[str]]:
    text, words, out = p.name(TEXTS), p.name(("words", "parts", "tokens")), \
        p.name(("out", "result", "joined"))
    change = p.rng.choice(["w.capitalize()", "w[::-1]", "w.upper()", "w[0]", "w + w",
                           "w.replace('a', 'o')", "str(len(w))"])
    sep = p.rng.choice(["' '", "'-'", "''", "', '"])
    return ([f"def f({text}):", f"    {words} = {text}.split()",
             f"    {words} = [{change} for w in {words}]", f"    {out} = {sep}.join({words})",
             f"    return {out}"], [p.text()])


TEMPLATES = (_counting, _filtering, _searching, _text_loop, _counting_words, _nested, _branches,
             _with_helper, _breaking, _swapping, _list_methods, _string_methods)
# `loops:`: programs whose loops run as many rounds as the arguments say, and nothing else
LOOP_TEMPLATES = (_counting, _bounded, _filtering, _searching, _text_loop, _nested, _breaking,
                  _swapping)
KINDS = {"basic": TEMPLATES, "loops": LOOP_TEMPLATES}  # a source's name: its templates


def generate_basic_program(seed: int, index: int, kind: str = "basic") -> tuple[str, str]:
    """Program `index` of stream `seed` of `kind` (KINDS): (source with the entry marked, call
    expression)."""
    rng = random.Random(f"tracekit-{kind}:{seed}:{index}")
    p = _Choices(rng)
    lines, args = rng.choice(KINDS[kind])(p)
    call = f"f({', '.join(args)})"
    entry = next(k for k, line in enumerate(lines) if line.startswith("def f("))
    source, call = entered(lines, entry, call, harness=rng.random() < 0.5)
    return rename(source, call, rng)


def generate_basic_programs(count: int, seed: int = 0, kind: str = "basic"):
    """`count` distinct programs, as (id, source, call) (see `generators.distinct`)."""
    return distinct(f"{kind}-{seed}", lambda index: generate_basic_program(seed, index, kind),
                    count)
