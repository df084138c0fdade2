"""A seeded generator of small, valid, terminating Python programs to trace.

Each program is a function over ints, strings, lists, dicts and tuples (and sometimes a helper
it calls), with loops, branches, comprehensions, caught exceptions and early returns, plus a
call with generated arguments. Program i of seed s depends on (s, i) only, so any slice of a
stream can be regenerated. Termination by construction: `for` loops run over collections the
body cannot grow, `while` loops count a variable the body cannot touch up to a small bound,
helpers never call anything generated, and numbers stay small (products are taken modulo a
constant). Operations that can raise (int(s), indexing) sit in try/except.

The "methods" feature adds the builtins and methods of str, list, dict and set (slicing,
sorting with keys, formatting, comprehensions over them), "raise" exceptions raised and caught,
"generators" a generator helper consumed by the function; "harness" writes half of the programs
as CRUXEval does, `def main():  # << START_OF_TRACE` / `    return f(ARGS)`, so that shape is
not foreign to a model trained on these. With "methods", `tracekit.format.vocabulary` then gives the
program's names fresh draws from a large vocabulary (the pools below are only where they start)
and 40% of its string literals are random text, so a model must read them off the program.
Operations that can raise sit in try/except or behind a guard.

Knobs: `size` (statements per body, roughly) and `features` (which constructs may appear).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tracekit.format.vocabulary import rename, text
from tracekit.programs.generators import distinct, entered

FEATURES = ("loops", "while", "branches", "helpers", "comprehensions", "exceptions",
            "early_return", "dicts", "tuples", "strings", "methods", "raise", "generators",
            "harness")
PARAMETERS = {"int": ("n", "k", "x", "num", "target", "count", "limit", "size", "start"),
              "str": ("text", "s", "word", "name", "line", "sentence", "prefix", "string", "st"),
              "list": ("nums", "items", "arr", "values", "lst", "numbers", "data", "array"),
              "bool": ("flag", "strict", "reverse", "verbose"),
              "dict": ("d", "counts", "mapping", "dic", "table", "scores")}
# Locals are named as people name them, so that a model has to read a name off the program
# rather than recall it: by the stem `fresh` is asked for (a type's initial, or a role).
LOCALS = {
    "i": ("total", "idx", "best", "score", "length", "res", "cnt", "diff", "start", "end",
          "mid", "carry", "last", "acc", "pos", "offset", "left", "right", "low", "high",
          "depth", "width", "num_items", "steps", "delta"),
    "s": ("result", "word", "prefix", "suffix", "label", "part", "token", "head", "tail",
          "joined", "clean", "new_text", "letters", "chunk", "sep", "title", "code", "out_str"),
    "l": ("out", "parts", "chars", "stack", "queue", "buf", "row", "odds", "keep", "picked",
          "vals", "merged", "tmp", "res_list", "sorted_nums", "result_list", "digits"),
    "b": ("found", "ok", "done", "valid", "is_even", "matched", "changed", "empty", "flag2"),
    "d": ("seen", "freq", "lookup", "groups", "cache", "totals", "by_len", "memo", "counter",
          "index_of"),
    "t": ("pair", "span", "bounds", "point", "entry", "triple", "coords"),
    "msg": ("msg", "message", "error", "note", "reason", "status"),
    "v": ("j", "m", "e", "u", "item", "elem", "value", "ch", "letter", "el"),
    "n": ("parsed", "number", "got", "val", "as_int", "num_val", "digit"),
}
WORDS = ("a", "ab", "abc", "hello", "x", "data", "trace", "py", "Zed", "q1", "", "level",
         "apple", "banana", "world", "code", "noon", "racecar", "Hello World", "foo", "bar",
         "test", "key", "A1b2", "  pad  ", "a-b-c", "one two", "CamelCase", "snake_case", "42",
         "7", "UPPER", "lower", "12ab", "a,b,c", "hello world", "dog", "cat", "sun", "red")
TYPES = ("int", "str", "list", "bool", "dict")
STR_METHODS = ("lower", "upper", "strip", "title", "swapcase", "capitalize", "lstrip", "rstrip",
               "casefold")
STR_TESTS = ("isdigit", "isalpha", "islower", "isupper", "isspace", "isalnum")
# The statements a function body draws from, in the order their choices are listed (the order
# fixes what a seed generates): (kind, weight, the feature it needs, where it may go: "shallow"
# inside fewer than two loops, "nested" not at the function's top level). `_Writer._KIND` writes
# each.
STATEMENTS = (("assign", 4, None, None), ("augment", 1, None, None), ("append", 1, None, None),
              ("if", 2, "branches", None), ("for", 2, "loops", "shallow"),
              ("while", 1, "while", "shallow"), ("try", 1, "exceptions", None),
              ("return", 1, "early_return", "nested"), ("setitem", 1, "dicts", None),
              ("mutate", 2, "methods", None), ("raise", 1, "raise", None))


@dataclass
class Scope:
    names: dict[str, str] = field(default_factory=dict)  # variable -> type
    frozen: set[str] = field(default_factory=set)  # iterated or counted: never reassigned

    def of(self, kind: str, writable: bool = False) -> list[str]:
        return [n for n, t in self.names.items()
                if t == kind and not (writable and n in self.frozen)]


class _Writer:
    def __init__(self, rng: random.Random, size: int, features: frozenset[str]):
        self.rng, self.size, self.features = rng, size, features
        self.counter = 0
        self.used: set[str] = set()  # every variable name the program has (parameters too)
        self.helpers: list[tuple[str, list[str], str]] = []  # name, param types, return type
        self.returns = "int"  # the return type of the function being written
        self.generator: str | None = None  # a generator helper the function may consume

    def fresh(self, stem: str) -> str:
        """A name no other variable of the program has: a real-looking one for the stem while
        any is free, else the stem and a counter."""
        free = [n for n in LOCALS.get(stem, ()) if n not in self.used]
        if free:
            name = self.rng.choice(free)
        else:
            self.counter += 1
            name = f"{stem}{self.counter}"
        self.used.add(name)
        return name

    def has(self, feature: str) -> bool:
        return feature in self.features

    # -- expressions ---------------------------------------------------------------------
    def expr(self, kind: str, scope: Scope, depth: int = 0) -> str:
        r = self.rng
        names = scope.of(kind)
        if names and r.random() < 0.45:
            return r.choice(names)
        if depth >= 2 or r.random() < 0.25:
            return self.literal(kind)
        made = getattr(self, f"_{kind}")(scope, depth + 1)
        return f"({made})" if depth > 0 else made  # an operand keeps its own precedence

    def literal(self, kind: str) -> str:
        r = self.rng
        if kind == "int":
            return str(r.randint(-5, 20))
        if kind == "str":
            return repr(text(r) if self.has("methods") and r.random() < 0.4 else r.choice(WORDS))
        if kind == "bool":
            return r.choice(["True", "False"])
        if kind == "list":
            return repr([r.randint(-3, 9) for _ in range(r.randint(0, 5))])
        return repr({r.choice(WORDS[:8]): r.randint(0, 9) for _ in range(r.randint(0, 3))})

    def _int(self, scope, d):
        e, r = self.expr, self.rng
        options = [
            lambda: f"{e('int', scope, d)} + {e('int', scope, d)}",
            lambda: f"{e('int', scope, d)} - {e('int', scope, d)}",
            lambda: f"({e('int', scope, d)} * {e('int', scope, d)}) % {r.randint(7, 97)}",
            lambda: f"{e('int', scope, d)} // ({e('int', scope, d)} % {r.randint(2, 6)} + 1)",
            lambda: f"len({e('list', scope, d)})",
            lambda: f"abs({e('int', scope, d)})",
            lambda: f"max({e('int', scope, d)}, {e('int', scope, d)})",
            lambda: f"sum({e('list', scope, d)})",
            lambda: f"min({e('list', scope, d)}, default=0)",
        ]
        if self.has("strings"):
            options += [lambda: f"len({e('str', scope, d)})",
                        lambda: f"{e('str', scope, d)}.count({self.literal('str')} or 'a')"]
        if self.has("dicts"):
            options.append(lambda: f"{e('dict', scope, d)}.get({e('str', scope, d)}, 0)")
        if self.has("helpers"):
            options += [lambda h=h: self.call(h, scope, d) for h in self.helpers if h[2] == "int"]
        if self.has("methods"):
            options += [
                lambda: f"{e('str', scope, d)}.find({self.literal('str')})",
                lambda: f"len(set({e('list', scope, d)}))",
                lambda: f"sum(1 for c in {e('str', scope, d)} if c.isalpha())",
                lambda: f"{e('list', scope, d)}.count({e('int', scope, d)})",
                lambda: f"len({e('dict', scope, d)})",
                lambda: f"(lambda xs: xs.index(max(xs)) if xs else -1)({e('list', scope, d)})",
                lambda: f"int({e('str', scope, d)}.isdigit())",
                lambda: f"sum(v for _, v in {e('dict', scope, d)}.items())",
            ]
        return r.choice(options)()

    def _str(self, scope, d):
        e, r = self.expr, self.rng
        return r.choice([
            lambda: f"{e('str', scope, d)} + {e('str', scope, d)}",
            lambda: f"{e('str', scope, d)}.upper()",
            lambda: f"{e('str', scope, d)}[::-1]",
            lambda: f"{e('str', scope, d)}[:{r.randint(0, 4)}]",
            lambda: f"str({e('int', scope, d)})",
            lambda: f"{e('str', scope, d)}.replace('a', {self.literal('str')})",
            lambda: f"','.join(str(v) for v in {e('list', scope, d)})",
            *([lambda: f"{e('str', scope, d)}.{r.choice(STR_METHODS)}()",
               lambda: f"{e('str', scope, d)}[{r.randint(-3, 2)}:{r.randint(3, 7)}:"
                       f"{r.choice([1, 2, -1])}]",
               lambda: f"'{{}}-{{:>3}}'.format({e('str', scope, d)}, {e('int', scope, d)})",
               lambda: f"'%s:%d' % ({e('str', scope, d)}, {e('int', scope, d)})",
               lambda: f"''.join(sorted({e('str', scope, d)}))",
               lambda: f"{e('str', scope, d)}.center({r.randint(3, 9)}, '*')",
               lambda: f"{e('str', scope, d)}.zfill({r.randint(2, 6)})",
               lambda: f"{e('str', scope, d)}.strip({self.literal('str')})",
               lambda: f"({e('str', scope, d)} + ' x').split()[0]",
               lambda: f"' '.join(w.capitalize() for w in {e('str', scope, d)}.split())",
               lambda: f"{e('str', scope, d)}.partition({self.literal('str')} or 'a')[2]",
               lambda: f"''.join(c for c in {e('str', scope, d)} if c not in 'aeiou')"]
              if self.has("methods") else []),
        ])()

    def _list(self, scope, d):
        e, r = self.expr, self.rng
        options = [
            lambda: f"sorted({e('list', scope, d)})",
            lambda: f"{e('list', scope, d)}[:{r.randint(1, 4)}]",
            lambda: f"{e('list', scope, d)} + [{e('int', scope, d)}]",
            lambda: f"list(range({r.randint(0, 6)}))",
        ]
        if self.has("comprehensions"):
            options += [
                lambda: f"[v * {r.randint(2, 3)} for v in {e('list', scope, d)}]",
                lambda: f"[v for v in {e('list', scope, d)} if v % 2 == {r.randint(0, 1)}]",
            ]
            if self.has("strings"):
                options.append(lambda: f"[ord(c) % 10 for c in {e('str', scope, d)}]")
        if self.has("methods"):
            options += [
                lambda: f"sorted({e('list', scope, d)}, key=lambda v: (v % {r.randint(2, 4)}, "
                        f"-v))",
                lambda: f"sorted({e('list', scope, d)}, reverse=True)",
                lambda: f"{e('list', scope, d)}[::-1]",
                lambda: f"{e('list', scope, d)}[{r.randint(-3, 1)}:{r.randint(2, 6)}]",
                lambda: f"sorted(set({e('list', scope, d)}))",
                lambda: f"[i * v for i, v in enumerate({e('list', scope, d)})]",
                lambda: f"[len(w) for w in {e('str', scope, d)}.split()]",
                lambda: f"list(map(abs, {e('list', scope, d)}))",
                lambda: f"sorted({e('dict', scope, d)}.values())",
                lambda: f"[a - b for a, b in zip({e('list', scope, d)}, "
                        f"{e('list', scope, d)})]",
            ]
        if self.has("generators") and self.generator:
            options.append(lambda: f"list({self.generator}({e('list', scope, d)}))")
        return r.choice(options)()

    def _bool(self, scope, d):
        e, r = self.expr, self.rng
        options = [
            lambda: f"{e('int', scope, d)} {r.choice(['<', '<=', '>', '==', '!='])} "
                    f"{e('int', scope, d)}",
            lambda: f"{e('int', scope, d)} in {e('list', scope, d)}",
            lambda: f"not {e('bool', scope, d)}",
        ]
        if self.has("strings"):
            options.append(lambda: f"{e('str', scope, d)}.startswith({self.literal('str')})")
        if self.has("methods"):
            options += [lambda: f"{e('str', scope, d)}.{r.choice(STR_TESTS)}()",
                        lambda: f"{e('str', scope, d)} in {e('dict', scope, d)}",
                        lambda: f"all(v > {r.randint(-2, 3)} for v in {e('list', scope, d)})",
                        lambda: f"any(v % 2 for v in {e('list', scope, d)})",
                        lambda: f"{e('str', scope, d)}.endswith({self.literal('str')})"]
        return r.choice(options)()

    def _dict(self, scope, d):
        e, r = self.expr, self.rng
        options = [lambda: f"dict({e('dict', scope, d)})"]
        if self.has("comprehensions") and self.has("strings"):
            options.append(lambda: f"{{w: len(w) for w in {e('str', scope, d)}.split('a')}}")
        if self.has("methods"):
            options += [
                lambda: f"{{k: v for k, v in {e('dict', scope, d)}.items() if v > "
                        f"{r.randint(0, 4)}}}",
                lambda: f"dict(zip({e('str', scope, d)}, {e('list', scope, d)}))",
                lambda: f"{{c: {e('str', scope, d)}.count(c) for c in {e('str', scope, d)}}}",
                lambda: f"dict(sorted({e('dict', scope, d)}.items(), key=lambda kv: kv[1]))",
            ]
        return r.choice(options)()

    def call(self, helper, scope, d) -> str:
        name, params, _ = helper
        return f"{name}({', '.join(self.expr(t, scope, d) for t in params)})"

    # -- statements ----------------------------------------------------------------------
    def kinds(self) -> list[str]:
        kinds = ["int", "int", "list", "bool"]
        if self.has("strings"):
            kinds.append("str")
        if self.has("dicts"):
            kinds.append("dict")
        return kinds

    def block(self, scope: Scope, indent: int, count: int, loop_depth: int) -> list[str]:
        lines: list[str] = []
        for _ in range(count):
            lines += self.statement(scope, indent, loop_depth)
        return lines

    def statement(self, scope: Scope, indent: int, loop_depth: int) -> list[str]:
        """One statement of a kind drawn from STATEMENTS (by weight, among those the writer's
        features and this place allow); a kind with nothing to work on draws again."""
        allowed = {None: True, "shallow": loop_depth < 2, "nested": indent > 1}
        choices = [kind for kind, weight, feature, where in STATEMENTS
                   if (feature is None or self.has(feature)) and allowed[where]
                   for _ in range(weight)]
        kind = self.rng.choice(choices)
        lines = getattr(self, f"_{kind}")(scope, indent, loop_depth, "    " * indent)
        return lines or self.statement(scope, indent, loop_depth)

    def _assign(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        r = self.rng
        t = r.choice(self.kinds())
        targets = scope.of(t, writable=True)
        name = r.choice(targets) if targets and r.random() < 0.4 else self.fresh(t[0])
        value = self.expr(t, scope)
        scope.names[name] = t
        return [f"{pad}{name} = {value}"]

    def _augment(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        ints = scope.of("int", writable=True)
        return [f"{pad}{self.rng.choice(ints)} += {self.expr('int', scope)}"] if ints else []

    def _append(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        lists = scope.of("list", writable=True)
        return ([f"{pad}{self.rng.choice(lists)}.append({self.expr('int', scope)})"] if lists
                else [])

    def _setitem(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        dicts = scope.of("dict", writable=True)
        if not dicts:
            return []
        key = self.expr("str", scope) if self.has("strings") else self.literal("str")
        return [f"{pad}{self.rng.choice(dicts)}[{key}] = {self.expr('int', scope)}"]

    def _mutate(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        return self.mutation(scope, pad) or []

    def _raise(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        name, error = self.fresh("msg"), self.rng.choice(["ValueError", "KeyError", "TypeError"])
        condition, message = self.expr("bool", scope), self.expr("str", scope)
        scope.names[name] = "str"
        return [f"{pad}try:", f"{pad}    if {condition}:",
                f"{pad}        raise {error}({message})",
                f"{pad}    {name} = 'fine'", f"{pad}except {error} as err:",
                f"{pad}    {name} = str(err)"]

    def _if(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        r = self.rng
        lines = [f"{pad}if {self.expr('bool', scope)}:"]
        lines += self.block(self._child(scope), indent + 1, r.randint(1, 2), loop_depth)
        if r.random() < 0.5:
            lines.append(f"{pad}else:")
            lines += self.block(self._child(scope), indent + 1, r.randint(1, 2), loop_depth)
        return lines

    def _for(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        r = self.rng
        inner = self._child(scope)
        var = self.fresh("v")
        sources = [f"range({r.randint(0, 5)})"] + scope.of("list")
        if self.has("strings"):
            sources += scope.of("str")
        source = r.choice(sources)
        inner.names[var] = "str" if scope.names.get(source) == "str" else "int"
        inner.frozen |= {var, source}  # the loop never grows what it walks
        walk = source if source.startswith("range") else f"{source}[:{r.randint(2, 6)}]"
        return [f"{pad}for {var} in {walk}:",
                *self.block(inner, indent + 1, r.randint(1, 3), loop_depth + 1)]

    def _while(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        r = self.rng
        counter = self.fresh("i")
        inner = self._child(scope)
        inner.names[counter] = "int"
        inner.frozen.add(counter)
        return [f"{pad}{counter} = 0", f"{pad}while {counter} < {r.randint(1, 4)}:",
                *self.block(inner, indent + 1, r.randint(1, 2), loop_depth + 1),
                f"{pad}    {counter} += 1"]

    def _try(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        name = self.fresh("n")
        risky = self.rng.choice([f"int({self.expr('str', scope)})" if self.has("strings") else
                                 f"int({self.literal('str')})",
                                 f"({self.expr('list', scope)})[{self.expr('int', scope)}]"])
        scope.names[name] = "int"
        return [f"{pad}try:", f"{pad}    {name} = {risky}",
                f"{pad}except (ValueError, IndexError):", f"{pad}    {name} = -1"]

    def _return(self, scope: Scope, indent: int, loop_depth: int, pad: str) -> list[str]:
        """An early return, of the function's return type."""
        return [f"{pad}if {self.expr('bool', scope)}:", f"{pad}    return {self.value(scope)}"]

    def mutation(self, scope: Scope, pad: str) -> list[str]:
        """A method call that changes a list, dict or set in place (never one a loop walks)."""
        r = self.rng
        lists, dicts = scope.of("list", writable=True), scope.of("dict", writable=True)
        options = []
        if lists:
            name, k = r.choice(lists), r.randint(-3, 9)
            options += [[f"{pad}{name}.sort(key=lambda v: -v)"], [f"{pad}{name}.reverse()"],
                        [f"{pad}{name}.insert({r.randint(0, 2)}, {self.expr('int', scope)})"],
                        [f"{pad}{name}.extend({self.literal('list')})"],  # no doubling
                        [f"{pad}if {name}:", f"{pad}    {name}.pop()"],
                        [f"{pad}if {k} in {name}:", f"{pad}    {name}.remove({k})"]]
        if dicts:
            name, key = r.choice(dicts), self.expr("str", scope)
            options += [[f"{pad}{name}.setdefault({key}, {self.expr('int', scope)})"],
                        [f"{pad}{name}.pop({key}, None)"],
                        [f"{pad}{name}.update({{{key}: {self.expr('int', scope)}}})"]]
        return r.choice(options) if options else []

    def value(self, scope: Scope) -> str:
        """A value of the type the function being written returns."""
        if self.returns == "tuple":
            second = self.expr(self.rng.choice(self.kinds()), scope)
            return f"({self.expr('int', scope)}, {second})"
        return self.expr(self.returns, scope)

    def _child(self, scope: Scope) -> Scope:
        """A nested block sees the outer names; names it makes stay inside (they may not be
        bound on every path)."""
        return Scope(dict(scope.names), set(scope.frozen))

    def function(self, name: str, params: list[tuple[str, str]], size: int,
                 returns: str | None = None) -> tuple[list[str], str]:
        scope = Scope({p: t for p, t in params})
        head = f"def {name}({', '.join(p for p, _ in params)}):"
        self.returns = returns or self.rng.choice(
            self.kinds() + (["tuple"] if self.has("tuples") else []))
        body = self.block(scope, 1, size, 0)
        return [head, *body, f"    return {self.value(scope)}"], self.returns


def generate_program(seed: int, index: int, size: int = 4,
                     features: tuple[str, ...] = FEATURES) -> tuple[str, str]:
    """Program `index` of stream `seed`: (source with the entry marked, call expression)."""
    rng = random.Random(f"tracekit-synthetic:{seed}:{index}")
    writer = _Writer(rng, size, frozenset(features))
    lines: list[str] = []
    if writer.has("helpers") and rng.random() < 0.4:
        params = [(f"p{k}", rng.choice(writer.kinds())) for k in range(rng.randint(1, 2))]
        name = f"helper{index % 7}"
        body, returns = writer.function(name, params, max(1, size // 2), "int")
        writer.helpers.append((name, [t for _, t in params], returns))
        lines += body + ["", ""]
    if writer.has("generators") and rng.random() < 0.3:
        writer.generator = rng.choice(["evens", "doubled", "running"])
        lines += GENERATORS[writer.generator] + ["", ""]
    kinds = [rng.choice(writer.kinds()) for _ in range(rng.randint(1, 3))]
    names = []
    for kind in kinds:  # names real code uses, each once
        pool = [n for n in PARAMETERS[kind] if n not in names] if writer.has("methods") else []
        names.append(rng.choice(pool) if pool else f"a{len(names)}")
    writer.used.update(names)
    params = list(zip(names, kinds))
    body, _ = writer.function("f", params, rng.randint(max(1, size - 2), size + 2))
    call = f"f({', '.join(writer.literal(t) for _, t in params)})"
    harness = writer.has("harness") and rng.random() < 0.5
    source, call = entered(lines + body, len(lines), call, harness)
    return rename(source, call, rng) if writer.has("methods") else (source, call)


GENERATORS = {
    "evens": ["def evens(xs):", "    for x in xs:", "        if x % 2 == 0:",
              "            yield x"],
    "doubled": ["def doubled(xs):", "    for i, x in enumerate(xs):", "        yield x * 2 + i"],
    "running": ["def running(xs):", "    total = 0", "    for x in xs:", "        total += x",
                "        yield total"],
}


def generate_programs(count: int, seed: int = 0, size: int = 4,
                      features: tuple[str, ...] = FEATURES):
    """`count` distinct programs, as (id, source, call) (see `generators.distinct`)."""
    return distinct(f"synthetic-{seed}",
                    lambda index: generate_program(seed, index, size, features), count)
