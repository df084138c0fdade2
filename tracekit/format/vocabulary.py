"""Names and text for generated programs, drawn from a large vocabulary.

A model trained on a generator's short lists of names and words learns to recall them: the
model bundled before these names wrote `out` for CRUXEval's `output` and `def f(steps):` for
HumanEval's `def truncate_number(number):`, names from those lists. `rename` gives a generated
program's variables, parameters and functions fresh names (tens of thousands of combinations)
so that a model has to copy each name from the program it reads, as it must on real code;
`text` makes string arguments that are not words from a list, so that a string method's result
has to be worked out character by character. Both draw from the generator's own seeded
`random.Random`.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import string
import tokenize

# Every program `make model` trains on is drawn from these tuples in this order: changing one
# changes the bundled model's data (and "min_" stays a second, rstripped "min" for that reason).
NOUNS = (
    "item", "value", "count", "total", "index", "key", "name", "text", "result", "word", "line",
    "row", "col", "node", "score", "size", "length", "num", "char", "token", "data", "info",
    "temp", "flag", "seen", "cache", "memo", "stack", "queue", "pair", "entry", "record",
    "digit", "letter", "vowel", "prefix", "suffix", "pattern", "target", "limit", "step",
    "offset", "pos", "width", "height", "depth", "level", "price", "cost", "amount", "balance",
    "age", "year", "day", "month", "city", "color", "student", "grade", "user", "group", "label",
    "part", "chunk", "piece", "segment", "block", "cell", "grid", "board", "matrix", "vector",
    "point", "edge", "path", "route", "weight", "sum", "product", "ratio", "rate", "delta",
    "diff", "gap", "span", "window", "head", "tail", "first", "last", "prev", "current", "start",
    "end", "middle", "left", "right", "low", "high", "best", "worst", "answer", "output",
    "buffer", "message", "string", "number", "numbers", "items", "values", "words", "lines",
    "chars", "letters", "elements", "array", "lst", "nums", "arr", "seq", "keys", "names",
    "counts", "freq", "mapping", "table", "lookup", "index_map", "candidates", "options",
    "choices", "parts", "tokens", "pieces", "groups", "bucket", "buckets", "visited", "pending",
    "done", "ok", "found", "valid", "changed", "matched", "ready", "active", "enabled", "mode",
    "state", "status", "kind", "tag", "code", "id", "uid", "ref", "src", "dst", "origin", "goal",
    "needle", "haystack", "sentence", "phrase", "title", "header", "footer", "unit", "factor",
    "base", "power", "exponent", "quotient", "remainder", "modulus", "sign", "parity", "bound",
    "threshold", "capacity", "quota", "budget", "turn", "round", "phase", "cycle", "tick", "slot",
)
ADJECTIVES = (
    "new", "old", "max", "min", "min_", "total", "next", "prev", "last", "first", "final",
    "current", "best", "clean", "raw", "sorted", "unique", "even", "odd", "short", "long",
    "upper", "lower", "left", "right", "inner", "outer", "temp", "extra", "valid", "good", "bad",
    "num", "all", "other", "top", "base", "running", "partial", "local",
)
VERBS = (
    "count", "find", "get", "make", "build", "check", "compute", "sum", "merge", "split", "join",
    "filter", "sort", "reverse", "rotate", "shift", "encode", "decode", "parse", "format",
    "clean", "strip", "remove", "insert", "replace", "swap", "flatten", "group", "match",
    "search", "select", "collect", "update", "apply", "scale", "normalize", "truncate",
    "validate", "extract", "convert", "transform", "process", "solve", "is", "has", "can",
)
LETTERS = "abcdefghijkmnpqrstuvwxyz"
TEXT_CHARACTERS = string.ascii_letters + string.digits + "     _-.,!?:;#@"
RESERVED = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)


def variable_name(rng: random.Random) -> str:
    """A name as people write one: a letter or two, a word, or two words joined by `_`."""
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(LETTERS) + (rng.choice(LETTERS) if rng.random() < 0.25 else "")
    if roll < 0.55:
        return rng.choice(NOUNS)
    first = rng.choice(ADJECTIVES) if roll < 0.8 else rng.choice(NOUNS)
    return f"{first.rstrip('_')}_{rng.choice(NOUNS)}"


def function_name(rng: random.Random) -> str:
    """A function's name: a verb and what it acts on (`count_vowels`, `merge_lists`)."""
    return f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"


def text(rng: random.Random) -> str:
    """A string of 0-10 letters, digits, spaces and punctuation, mixed case."""
    return "".join(rng.choice(TEXT_CHARACTERS) for _ in range(rng.randint(0, 10)))


def _bound_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(variables and parameters, functions) the program itself binds."""
    variables, functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            variables.add(node.id)
        elif isinstance(node, ast.arg):
            variables.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            variables.add(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            functions.add(node.name)
    return variables, functions


def _replace_names(code: str, mapping: dict[str, str]) -> str:
    """`code` with every NAME token in `mapping` replaced, except attribute names (after a
    dot); the rest of the text (layout, comments, strings) is kept byte for byte."""
    lines = code.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []
    previous = None
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.NAME and token.string in mapping and not (
                previous is not None and previous.type == tokenize.OP and previous.string == "."):
            (row, start), (_, end) = token.start, token.end
            edits.append((row - 1, start, end, mapping[token.string]))
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token
    for row, start, end, new in reversed(edits):
        lines[row] = lines[row][:start] + new + lines[row][end:]
    return "".join(lines)


def rename(source: str, call: str, rng: random.Random, variable_share: float = 0.6,
           function_share: float = 0.35) -> tuple[str, str]:
    """`source` and its `call` with fresh names: each variable and parameter with probability
    `variable_share`, the entry `f` with `function_share`, every other function always
    (`main`, the harness, never). Names used as keyword arguments keep theirs. The program's
    meaning is unchanged: only names bound in it change, each to one not used anywhere in it."""
    tree = ast.parse(source)
    variables, functions = _bound_names(tree)
    keywords = {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword)}
    taken = {value for node in ast.walk(tree) for field in ("id", "arg", "attr", "name")
             if isinstance(value := getattr(node, field, None), str)} | RESERVED
    mapping: dict[str, str] = {}

    def fresh(draw) -> str:  # never a name the program has or was given
        new = draw(rng)
        for _ in range(5):
            if new not in taken:
                break
            new = draw(rng)
        while new in taken:
            new = f"{new}_{rng.choice(LETTERS)}"
        taken.add(new)
        return new

    for name in sorted(functions - {"main"}):
        if name != "f" or rng.random() < function_share:
            mapping[name] = fresh(function_name)
    for name in sorted(variables - functions - keywords):
        if rng.random() < variable_share:
            mapping[name] = fresh(variable_name)
    if not mapping:
        return source, call
    return _replace_names(source, mapping), _replace_names(call, mapping)
