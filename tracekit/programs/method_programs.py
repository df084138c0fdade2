"""A seeded generator of short functions that chain the methods of str, list and dict.

Where `tracekit.programs.basic_programs` fills a dozen fixed shapes, these functions are built a
statement at a time: two to six steps over the arguments (a text, a list of numbers, a list of
words, a dict, a number), each a common operation: a method (`replace`, `split`, `find`,
`insert`, `pop`, `setdefault`, ...), a slice, a comprehension, a loop over characters or
indexes with a branch on the value, a `while` that shrinks a value, a lookup caught in
`try`. Each step reads what the earlier ones made, so its result has to be worked out from the
state, not recalled. This is where small models (and CWM) get execution wrong. Names come from
`tracekit.format.vocabulary`; `tracekit train` drops any program equal to a test program up to names
(`tracekit.training.data.leaks`: none of 30,000 was). Program i of seed s depends on (s, i) only;
every loop is bounded by the size of its (small) arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from tracekit.format.vocabulary import rename, text
from tracekit.programs.generators import distinct, entered

CHAR_TESTS = ("{c}.isupper()", "{c}.islower()", "{c}.isdigit()", "{c}.isalpha()",
              "{c} == ' '", "{c} in {vowels!r}", "{c} not in {vowels!r}", "{c} == {ch!r}",
              "{c} > {ch!r}", "{c}.isspace()")
INT_TESTS = ("{x} % 2 == 0", "{x} % 3 == 1", "{x} > {k}", "{x} < {k}", "{x} == {k}",
             "{x} != {k}", "{x} >= 0")


# Locals by kind (what a program does not rename keeps these, as real code would)
NAMES = {"str": ("text", "s", "result", "res", "new_text", "line", "word", "out", "st", "msg"),
         "int": ("n", "count", "idx", "total", "k", "pos", "num", "m"),
         "list": ("nums", "items", "arr", "lst", "values", "data", "numbers", "xs"),
         "words": ("words", "parts", "tokens", "chars", "pieces", "names"),
         "dict": ("counts", "d", "mapping", "freq", "table", "dic")}


class _Chain:
    """One function under construction: the locals by kind, the lines written so far."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.kinds: dict[str, str] = {}  # local -> "str", "list", "words", "dict", "int"
        self.lines: list[str] = []
        self.letters = "abcdeoiu"
        self.made = 0

    def of(self, kind: str) -> list[str]:
        return [name for name, k in self.kinds.items() if k == kind]

    def new(self, kind: str, stem: str, reuse: bool = True) -> str:
        """A fresh local (rename gives it a real name), or now and then an old one reused."""
        same = self.of(kind)
        if reuse and same and self.rng.random() < 0.3:
            return self.rng.choice(same)
        free = [n for n in NAMES[kind] if n not in self.kinds]
        self.made += 1
        name = self.rng.choice(free) if free else f"{stem}{self.made}"
        self.kinds[name] = kind
        return name

    def assign(self, kind: str, stem: str, expressions: list[str]) -> None:
        """A line binding a local of `kind` (new, or now and then reused) to one of
        `expressions`."""
        expr = self.rng.choice(expressions)
        self.lines.append(f"{self.new(kind, stem)} = {expr}")

    def ch(self) -> str:
        return self.rng.choice(self.letters + " ")

    def k(self, high: int = 5) -> int:
        return self.rng.randint(0, high)

    def char_test(self, c: str) -> str:
        return self.rng.choice(CHAR_TESTS).format(
            c=c, ch=self.ch(), vowels=self.rng.choice(["aeiou", "xyz", "AEIOU", "0123456789"]))

    def int_test(self, x: str) -> str:
        return self.rng.choice(INT_TESTS).format(x=x, k=self.k(6))


# The steps: each appends its lines (the body's, before indenting) to the chain, reading the
# locals it picks by kind; STEPS below says which kinds each needs and how often it is drawn.
def _str_expr(p: _Chain, s: str) -> str:
    a, b = p.ch(), p.rng.choice(["", "-", "*", p.ch(), p.ch() * 2])
    i, j = p.k(3), p.k(6) + 1
    return p.rng.choice([
        f"{s}.replace({a!r}, {b!r})", f"{s}.replace({a!r}, {b!r}, 1)", f"{s}.strip()",
        f"{s}.strip({a!r})", f"{s}.lstrip({a!r})", f"{s}.rstrip()", f"{s}.upper()",
        f"{s}.lower()", f"{s}.swapcase()", f"{s}.title()", f"{s}.capitalize()", f"{s}[{i}:{j}]",
        f"{s}[::-1]", f"{s}[::2]", f"{s}[-{i + 1}:]", f"{s}[:-{i + 1}]",
        f"{s}.center({j + 4}, '*')", f"{s}.ljust({j + 2}, '.')", f"{s}.zfill({j + 2})",
        f"{s} + {b!r}", f"{s} * 2",
        f"{s}.removeprefix({a!r})", f"{s}.removesuffix({a!r})",
    ])


def _str_step(p: _Chain) -> None:
    s = p.rng.choice(p.of("str"))
    p.lines.append(f"{p.new('str', 'text')} = {_str_expr(p, s)}")


def _str_measure(p: _Chain) -> None:
    s, a = p.rng.choice(p.of("str")), p.ch()
    p.assign("int", "n", [f"{s}.find({a!r})", f"{s}.rfind({a!r})", f"{s}.count({a!r})",
                          f"len({s})", f"{s}.index({a!r}) if {a!r} in {s} else -1",
                          f"sum(1 for c in {s} if {p.char_test('c')})"])


def _split(p: _Chain) -> None:
    s = p.rng.choice(p.of("str"))
    sep = p.rng.choice(["", "' '", repr(p.ch()), "','"])
    p.assign("words", "parts", [f"{s}.split({sep})", f"list({s})",
                                f"{s}.rsplit({sep or 'None'}, 1)", f"{s}.splitlines()",
                                f"list({s}.partition({p.ch()!r}))"])


def _join(p: _Chain) -> None:
    w = p.rng.choice(p.of("words"))
    sep = p.rng.choice(["''", "' '", "'-'", "', '", repr(p.ch())])
    p.assign("str", "text", [f"{sep}.join({w})", f"{sep}.join(reversed({w}))",
                             f"{sep}.join(sorted({w}))", f"{sep}.join(x.upper() for x in {w})",
                             f"{sep}.join({w}[::-1])", f"{sep}.join(x[::-1] for x in {w} if x)"])


def _char_loop(p: _Chain) -> None:
    s = p.rng.choice(p.of("str"))
    out = p.new("str", "out", reuse=False)
    change = p.rng.choice(["{c}.upper()", "{c} * 2", "''", "'*'", "{c}.swapcase()",
                           "str(ord({c}) % 10)", "{c} + {c}"])
    p.lines += [f"{out} = ''", f"for c in {s}:", f"    if {p.char_test('c')}:",
                f"        {out} += {change.format(c='c')}"]
    if p.rng.random() < 0.6:
        p.lines += ["    else:", f"        {out} += c"]


def _index_loop(p: _Chain) -> None:
    s = p.rng.choice(p.of("str") + p.of("list"))
    acc = p.new("int", "count")
    item = f"{s}[i]"
    test = p.char_test(item) if p.kinds[s] == "str" else p.int_test(item)
    p.lines += [f"{acc} = 0", f"for i in range(len({s})):", f"    if {test}:",
                f"        {acc} += {p.rng.choice(['1', 'i', f'i * {p.k(3) + 1}'])}"]
    if p.rng.random() < 0.3:
        p.lines += ["    else:", f"        {acc} -= 1"]


def _shrink(p: _Chain) -> None:
    s = p.rng.choice(p.of("str") + p.of("list"))
    if p.kinds[s] == "str":
        head = p.rng.choice([f"{s}[0] in {p.ch() + p.ch()!r}", f"{s}[-1] == {p.ch()!r}",
                             f"{s}[0].isspace()", f"len({s}) > {p.k(6) + 2}"])
        cut = f"{s}[1:]" if "[0]" in head else f"{s}[:-1]"
        p.lines += [f"while {s} and {head}:", f"    {s} = {cut}"]
    else:
        p.lines += [p.rng.choice([f"while len({s}) > {p.k(3) + 1}:",
                                  f"while {s} and {s}[-1] {p.rng.choice('<>')} {p.k(6)}:"]),
                    f"    {s}.pop({p.rng.choice(['', '0'])})"]


def _list_step(p: _Chain) -> None:
    xs = p.rng.choice(p.of("list"))
    v, i = p.k(9), p.k(3)
    p.lines.append(p.rng.choice([
        f"{xs}.append({v})", f"{xs}.insert({i}, {v})", f"{xs}.sort()", f"{xs}.sort(reverse=True)",
        f"{xs}.reverse()", f"{xs}.extend([{v}, {i}])", f"{xs}.remove({v}) if {v} in {xs} else None",
        f"{xs}.pop() if {xs} else None", f"{xs}.pop(0) if {xs} else None",
        f"{xs}.sort(key=lambda v: (v % {i + 2}, -v))", f"{xs}[{i}:{i + 2}] = [{v}]",
        f"del {xs}[:{i}]", f"{xs} += {xs}[:{i}]",
    ]))


def _list_make(p: _Chain) -> None:
    xs = p.rng.choice(p.of("list"))
    k = p.k(4)
    p.assign("list", "nums", [
        f"[x * {k + 1} for x in {xs} if {p.int_test('x')}]", f"{xs}[::-1]", f"{xs}[{k}:]",
        f"sorted({xs}, key=abs)", f"sorted(set({xs}))", f"[x + i for i, x in enumerate({xs})]",
        f"{xs}[1::2]", f"[{xs}.count(x) for x in {xs}]", f"list(map(abs, {xs}))",
        f"[x for x in {xs} if x not in {xs}[:{k}]]",
    ])


def _list_measure(p: _Chain) -> None:
    xs = p.rng.choice(p.of("list"))
    v = p.k(6)
    p.assign("int", "n", [f"sum({xs})", f"len({xs})", f"max({xs}, default=0)",
                          f"min({xs}, default=-1)", f"{xs}.count({v})",
                          f"{xs}.index({v}) if {v} in {xs} else -1"])


def _dict_step(p: _Chain) -> None:
    d = p.rng.choice(p.of("dict"))
    key = repr(p.rng.choice(["a", "b", "x", p.ch() or "k"]))
    v = p.k(9)
    p.lines.append(p.rng.choice([
        f"{d}[{key}] = {v}", f"{d}[{key}] = {d}.get({key}, 0) + {v}", f"{d}.pop({key}, None)",
        f"{d}.setdefault({key}, {v})", f"{d}.update({{{key}: {v}}})",
    ]))


def _dict_make(p: _Chain) -> None:
    source = p.rng.choice(p.of("str") + p.of("words") + p.of("list") + p.of("dict"))
    kind = p.kinds[source]
    if kind == "dict":
        p.assign("dict", "counts", [f"{{k: v for k, v in {source}.items() if v > {p.k(3)}}}",
                                    f"dict(sorted({source}.items(), key=lambda kv: kv[1]))",
                                    f"{{k: v * 2 for k, v in {source}.items()}}"])
        return
    d = p.new("dict", "counts")
    p.lines += [f"{d} = {{}}", f"for x in {source}:",
                f"    {d}[x] = {d}.get(x, 0) + 1" if p.rng.random() < 0.6 else
                f"    {d}.setdefault(x, {p.k(5)})" if kind != "list" else
                f"    {d}[x % {p.k(3) + 2}] = x"]


def _dict_read(p: _Chain) -> None:
    d = p.rng.choice(p.of("dict"))
    target = p.rng.choice(["words", "list"])
    if target == "words":
        p.assign("words", "parts", [f"sorted(map(str, {d}))", f"[str(k) for k in {d}]"])
    else:
        p.assign("list", "nums", [f"list({d}.values())",
                                  f"sorted(len(str(v)) for v in {d}.values())"])


def _format(p: _Chain) -> None:
    a = p.rng.choice(p.of("str") + p.of("int") + p.of("words"))
    b = p.rng.choice(p.of("int") or [a])
    p.assign("str", "text", [f"'{{}}:{{}}'.format({a}, {b})", f"'{{}}-{{}}'.format({a}, {b})",
                             f"'%s/%s' % ({a}, {b})", f"str({a}) + str({b})"])


def _lookup(p: _Chain) -> None:
    xs = p.rng.choice(p.of("list") + p.of("words") + p.of("str"))
    n = p.new("int", "n") if p.kinds[xs] == "list" else p.new("str", "text")
    p.lines += ["try:", f"    {n} = {xs}[{p.rng.randint(-4, 6)}]", "except IndexError:",
                f"    {n} = {'0' if p.kinds[n] == 'int' else repr('')}"]


def _choose(p: _Chain) -> None:
    x = p.rng.choice(p.of("int"))
    a, b = p.rng.choice(p.of("str") or ["''"]), p.rng.choice(p.of("str") or ["'-'"])
    p.lines.append(f"{p.new('str', 'text')} = {a} if {p.int_test(x)} else {b}")


STEPS: tuple[tuple[tuple[str, ...], Callable[[_Chain], None], int], ...] = (
    # (any of these kinds must exist, writer, weight)
    (("str",), _str_step, 6), (("str",), _str_measure, 3), (("str",), _split, 3),
    (("words",), _join, 4), (("str",), _char_loop, 4), (("str", "list"), _index_loop, 3),
    (("str", "list"), _shrink, 2), (("list",), _list_step, 5), (("list",), _list_make, 4),
    (("list",), _list_measure, 2), (("dict",), _dict_step, 3),
    (("str", "words", "list", "dict"), _dict_make, 2), (("dict",), _dict_read, 2),
    (("str", "int", "words"), _format, 2), (("list", "words", "str"), _lookup, 2),
    (("int",), _choose, 1),
)
SIGNATURES = (("str",), ("str",), ("str", "int"), ("list",), ("list",), ("list", "int"),
              ("words",), ("dict",), ("str", "list"), ("dict", "str"), ("words", "str"))


def _argument(p: _Chain, kind: str) -> str:
    rng = p.rng
    if kind == "str":
        value = text(rng) if rng.random() < 0.6 else rng.choice(
            ["hello world", "  Mixed Case  ", "a,b,,c", "abc123", "banana", "x-y-z", "Ab Cd",
             "racecar", "3 apples", "UPPER lower"])
        p.letters = "".join(sorted(set(value.replace(" ", "")))) or p.letters
        return repr(value)
    if kind == "int":
        return str(rng.randint(-3, 9))
    if kind == "list":
        return repr([rng.randint(-4, 12) for _ in range(rng.randint(0, 7))])
    if kind == "words":
        return repr([text(rng)[:rng.randint(1, 6)] for _ in range(rng.randint(0, 5))])
    return repr({text(rng)[:rng.randint(1, 4)] or "k": rng.randint(0, 9)
                 for _ in range(rng.randint(0, 4))})


def generate_method_program(seed: int, index: int) -> tuple[str, str]:
    """Program `index` of stream `seed`: (source with the entry marked, call expression)."""
    rng = random.Random(f"tracekit-methods:{seed}:{index}")
    p = _Chain(rng)
    params, args = [], []
    for kind in rng.choice(SIGNATURES):
        params.append(p.new(kind, kind, reuse=False))
        args.append(_argument(p, kind))
    for _ in range(rng.randint(2, 6)):
        usable = [(writer, weight) for needs, writer, weight in STEPS
                  if any(p.of(kind) for kind in needs)]
        rng.choices([w for w, _ in usable], [weight for _, weight in usable])[0](p)
    last = list(p.kinds)[-1]
    result = rng.choice([last, last, f"{last}, {rng.choice(list(p.kinds))}"])
    lines = [f"def f({', '.join(params)}):", *("    " + line for line in p.lines),
             f"    return {result}"]
    call = f"f({', '.join(args)})"
    source, call = entered(lines, 0, call, harness=rng.random() < 0.5)
    return rename(source, call, rng)


def generate_method_programs(count: int, seed: int = 0) -> Iterator[tuple[str, str, str]]:
    """`count` distinct programs, as (id, source, call) (see `generators.distinct`)."""
    return distinct(f"methods-{seed}", lambda index: generate_method_program(seed, index), count)
