"""One set of normalisation rules, applied to gold answers and extracted answers alike.

`canonical(text)` rewrites an answer into a canonical LaTeX string without what never changes
its value: math delimiters, sizing and spacing commands, dollar signs, degree marks, thousands
separators, a unit written after a value, `\\dfrac` spellings, optional braces (`E_1` is
`E_{1}`), e-notation (`4.4e7` is `4.4\\times10^{7}`). Words that are the answer itself stay, as
`\\text{...}` (`\\text{Evelyn}`), and so do the row separators `\\\\` of a matrix.

Every step is one pass over a token list, or a regular expression without nested or overlapping
repetition, so the time is linear in the length of the answer (answers are untrusted model
output; grading.py caps their length on top of this)."""

from __future__ import annotations

import re

# A LaTeX token: a control word, a control symbol, a run of whitespace, or one character.
_TOKEN = re.compile(r"\\[a-zA-Z]+|\\.|\s+|.", re.DOTALL)

_DROP = frozenset(
    {
        "$", "\\(", "\\)", "\\[", "\\]", "\\$", "\\!", "\\displaystyle", "\\textstyle",
        "\\scriptstyle", "\\limits", "\\nolimits", "\\rm", "\\bf", "\\it", "\\middle",
        "\\degree", "°", "\\mathstrut", "\\strut", "\\phantom",
    }
)  # fmt: skip
_SIZING = frozenset(
    {
        "\\left", "\\right", "\\big", "\\Big", "\\bigg", "\\Bigg", "\\bigl", "\\bigr",
        "\\Bigl", "\\Bigr", "\\biggl", "\\biggr", "\\Biggl", "\\Biggr", "\\mleft", "\\mright",
    }
)  # fmt: skip
_SPACES = frozenset(
    {
        "\\,", "\\;", "\\:", "\\>", "\\ ", "~", "\\quad", "\\qquad", "\\enspace",
        "\\thinspace", "\\medspace", "\\thickspace", "\\hfill", "\\\n", "\\\t", "\\space",
        "\\nobreakspace",
    }
)  # fmt: skip
_ALIASES = {
    "\\dfrac": "\\frac", "\\tfrac": "\\frac", "\\cfrac": "\\frac",
    "\\dbinom": "\\binom", "\\tbinom": "\\binom",
    "\\le": "\\leq", "\\leqslant": "\\leq", "\\leqq": "\\leq",
    "\\ge": "\\geq", "\\geqslant": "\\geq", "\\geqq": "\\geq",
    "\\ne": "\\neq", "\\lt": "<", "\\gt": ">",
    "\\to": "\\rightarrow", "\\lbrace": "\\{", "\\rbrace": "\\}",
    "\\lbrack": "[", "\\rbrack": "]", "\\varnothing": "\\emptyset",
    "\\lvert": "|", "\\rvert": "|", "\\vert": "|", "\\lVert": "\\|", "\\rVert": "\\|",
    "\\Vert": "\\|", "\\colon": ":", "\\%": "%", "\\dots": "\\ldots", "\\cdots": "\\ldots",
    "−": "-", "–": "-", "×": "\\times", "·": "\\cdot", "π": "\\pi", "∞": "\\infty",
    "≤": "\\leq", "≥": "\\geq", "≠": "\\neq", "±": "\\pm", "∓": "\\mp", "√": "\\sqrt",
    "∪": "\\cup", "∩": "\\cap", "≈": "\\approx", "∈": "\\in", "θ": "\\theta",
    "α": "\\alpha", "β": "\\beta", "λ": "\\lambda", "ω": "\\omega",
}  # fmt: skip
# Text commands: their argument is words; one after a value is a unit.
_TEXT_COMMANDS = frozenset(
    {
        "\\text", "\\textrm", "\\textbf", "\\textit", "\\textnormal", "\\textsf", "\\texttt",
        "\\textup", "\\mbox", "\\hbox", "\\emph",
    }
)  # fmt: skip
# Upright math: a symbol (`\mathrm{P}`), or after a value a unit (`\mathrm{~km}`).
_ROMAN_COMMANDS = frozenset({"\\mathrm"})
# Font and box commands whose argument is plain math.
_MATH_WRAPPERS = frozenset(
    {
        "\\mathbf", "\\mathit", "\\mathsf", "\\mathtt", "\\mathnormal", "\\boldsymbol",
        "\\bm", "\\boxed", "\\fbox", "\\framebox", "\\pmb",
    }
)  # fmt: skip
_MATRIX_ENVS = frozenset(
    {"pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "matrix", "smallmatrix", "array"}
)
_ARG_COUNT = {"\\frac": 2, "\\binom": 2, "\\sqrt": 1, "_": 1, "^": 1}

MATH, ROMAN, TEXT = 0, 1, 2  # what a token came from: math, \mathrm{...}, \text{...}
THOUSANDS = "{,}"  # token for an explicit thousands separator (`,\!` or `{,}`)

# Tokens that can end a value, so that a unit may follow them.
_VALUE_END = frozenset("0123456789)]}!'|%") | {"\\pi", "\\infty", "\\circ", "\\prime", "\\}"}
_ELEMENT_END = frozenset({",", ";", ")", "]", "\\}", "\\rangle"})
_UNIT_JOINERS = frozenset({"/", "\\cdot", "-", "\\times", "."})
# What a number written before a plain-word unit may be made of.
_NUMERIC = frozenset("0123456789.-+/^(){}% ") | {"\\frac", "\\sqrt", "\\pi", "\\times", "\\cdot"}
_OPEN = frozenset({"(", "[", "{", "\\{", "\\langle"})
_CLOSE = frozenset({")", "]", "}", "\\}", "\\rangle"})

Tokens = list[tuple[str, int]]  # (token, kind)


def tokenize(text: str) -> list[str]:
    """LaTeX tokens; every run of whitespace becomes one space."""
    return [" " if t.isspace() else t for t in _TOKEN.findall(text)]


def _match_braces(tokens: list[str]) -> list[int]:
    """For each `{`/`}` the index of its partner; -1 where unbalanced or not a brace."""
    match = [-1] * len(tokens)
    stack: list[int] = []
    for i, t in enumerate(tokens):
        if t == "{":
            stack.append(i)
        elif t == "}" and stack:
            j = stack.pop()
            match[i], match[j] = j, i
    return match


def _skip_spaces(tokens: list[str], i: int) -> int:
    while i < len(tokens) and tokens[i] == " ":
        i += 1
    return i


def _rewrite(tokens: list[str]) -> list[str]:
    """Token-local rewrites: aliases, delimiters, sizing and spacing commands; `,\\!` and `{,}`
    become the explicit thousands separator."""
    out: list[str] = []
    after_sizing = False
    for t in tokens:
        if after_sizing:
            after_sizing = False
            if t == ".":  # `\left.` / `\right.`: an invisible delimiter
                continue
        if len(t) == 2 and t[0] == "\\" and t[1].isdigit():
            t = t[1]  # `\$32` whose `$` a reader stripped as a math delimiter
        if t == "\\!" and out and (out[-1] == "," or out[-2:] == [",", " "]):
            del out[out.index(",", len(out) - 2) :]
            out.append(THOUSANDS)
            continue
        if t == "}" and len(out) >= 2 and out[-1] == "," and out[-2] == "{":
            out[-2:] = [THOUSANDS]
            continue
        t = _ALIASES.get(t, t)
        if t in _DROP:
            continue
        if t in _SIZING:
            after_sizing = True
            continue
        if t in _SPACES:
            t = " "
        if t == " " and out and out[-1] == " ":
            continue
        out.append(t)
    return out


def _unwrap(tokens: list[str]) -> Tokens:
    """Remove text, roman and font wrappers with their braces, tagging each kept token with
    the innermost of MATH, ROMAN, TEXT around it. Matrix environments become pmatrix (an
    array's column spec dropped)."""
    match = _match_braces(tokens)
    n = len(tokens)
    drop = [False] * n
    # Wrapper ranges nest, so a stack of open ranges gives each token its innermost kind.
    opened: list[tuple[int, int]] = []  # (end index, kind)
    out: Tokens = []
    i = 0
    while i < n:
        while opened and i > opened[-1][0]:
            opened.pop()
        kind = opened[-1][1] if opened else MATH
        t = tokens[i]
        if t in _TEXT_COMMANDS or t in _ROMAN_COMMANDS or t in _MATH_WRAPPERS:
            j = _skip_spaces(tokens, i + 1)
            if j < n and tokens[j] == "{" and match[j] > j:
                drop[j] = drop[match[j]] = True
                inner = TEXT if t in _TEXT_COMMANDS else ROMAN if t in _ROMAN_COMMANDS else kind
                opened.append((match[j], max(inner, kind)))
                i = j + 1
                continue
            i += 1  # a wrapper without an argument: drop it
            continue
        if t in ("\\begin", "\\end"):
            j = _skip_spaces(tokens, i + 1)
            if j < n and tokens[j] == "{" and match[j] > j:
                name = "".join(tokens[j + 1 : match[j]]).strip().rstrip("*")
                if name in _MATRIX_ENVS:
                    out.extend((x, MATH) for x in (t, "{", "pmatrix", "}"))
                    i = match[j] + 1
                    if t == "\\begin" and name == "array":  # the column spec {rr}
                        k = _skip_spaces(tokens, i)
                        if k < n and tokens[k] == "{" and match[k] > k:
                            i = match[k] + 1
                    continue
        if not drop[i]:
            out.append((t, kind))
        i += 1
    return out


def _drop_lead_in(tokens: Tokens) -> Tokens:
    """`Solution is: x=1`, `\\text{Answer: } 5`, `The general solution is y=...`: words
    ending in a colon, "is", "are" or "equals" before the answer."""
    for i, (t, _) in enumerate(tokens):
        if t == " " or (len(t) == 1 and t.isalpha()):
            continue
        words = "".join(x for x, _ in tokens[:i]).strip()
        if t == ":" and re.fullmatch(r"[A-Za-z ]*[A-Za-z]{2}[A-Za-z ]*", words):
            return tokens[i + 1 :]
        if re.fullmatch(r"(?:[A-Za-z]{2,} )+(?:is|are|equals)", words):
            return tokens[i:]
        return tokens
    return tokens


def _is_prose(tokens: Tokens) -> bool:
    """Three plain words in a row, each of two letters or more (`The eigenvalues are ...`),
    outside `\\text{}`: a sentence, not a formula."""
    words = 0
    letters = 0
    for t, kind in tokens:
        if kind == MATH and len(t) == 1 and t.isalpha():
            letters += 1
            continue
        if t == " " and letters >= 2:
            words += 1
            if words >= 3:
                return True
        elif t == " " and letters == 0:
            continue
        else:
            words = 0
        letters = 0
    return words >= 2 and letters >= 2


def _words_as_separators(tokens: Tokens) -> Tokens:
    """`2 and 3`, `x=1 \\text{ or } x=2`: a lone "and"/"or" word between values is a comma."""
    out: Tokens = []
    i = 0
    n = len(tokens)
    while i < n:
        if tokens[i][0] == " " and out:
            for word in ("and", "or"):
                end = i + 1 + len(word)
                if (
                    end < n
                    and tokens[end][0] == " "
                    and "".join(t for t, _ in tokens[i + 1 : end]) == word
                ):
                    out.append((",", MATH))
                    i = end + 1
                    break
            else:
                out.append(tokens[i])
                i += 1
            continue
        out.append(tokens[i])
        i += 1
    return out


def _strip_units(tokens: Tokens) -> Tokens:
    """Remove a unit written after a value at the end of an element (before `,`, `;`, a
    closing bracket, or the end): `\\text{}`/`\\mathrm{}` words, each with an optional
    exponent, joined by `/`, `\\cdot`, `-` or spaces (`864 \\mbox{ inches}^2`,
    `5 \\mathrm{~km}/\\mathrm{h}`, `0.05 \\mathrm{~N}-\\mathrm{m}`). Words with nothing
    before them are the answer itself (`\\text{Evelyn}`) and stay."""
    toks = [t for t, _ in tokens]
    kinds = [k for _, k in tokens]
    n = len(toks)
    match = _match_braces(toks)
    remove = [False] * n

    def exponent_start(k: int) -> int:
        """Index before an exponent ending at k (`^{2}`, `^{-1}`, `^2`), else k."""
        if toks[k] == "}" and kinds[k] == MATH and 1 <= match[k] and k - match[k] <= 6:
            body = "".join(toks[match[k] + 1 : k]).replace(" ", "")
            if toks[match[k] - 1] == "^" and re.fullmatch(r"-?\d{1,2}", body):
                return match[k] - 2
        elif toks[k].isdigit() and k >= 1 and toks[k - 1] == "^":
            return k - 2
        return k

    def skip_back_spaces(k: int) -> int:
        while k >= 0 and toks[k] == " " and kinds[k] == MATH:
            k -= 1
        return k

    ends = [i for i in range(n) if kinds[i] == MATH and toks[i] in _ELEMENT_END] + [n]
    for end in ends:
        pos = skip_back_spaces(end - 1)
        start = -1
        while pos >= 0:
            k = exponent_start(pos)
            w = k
            letters = False
            while w >= 0 and kinds[w] != MATH:
                letters = letters or toks[w].isalpha()
                w -= 1
            if w == k or not letters:
                break
            start = w + 1
            j = skip_back_spaces(w)
            if j >= 0 and (kinds[j] != MATH or kinds[exponent_start(j)] != MATH):
                pos = j  # another word, bare or with an exponent: `\mbox{ in}^2 \text{ units}`
                continue
            if j >= 0 and toks[j] in _UNIT_JOINERS:
                j2 = skip_back_spaces(j - 1)
                if j2 >= 0 and (kinds[j2] != MATH or exponent_start(j2) != j2):
                    pos = j2
                    continue
            break
        if start < 0:
            continue
        before = skip_back_spaces(start - 1)
        if before >= 0 and kinds[before] == MATH:
            t = toks[before]
            if t in _VALUE_END or (len(t) == 1 and t.isalpha()):
                for k in range(start, end):
                    remove[k] = True
    return [tokens[i] for i in range(n) if not remove[i]]


def _top_level_elements(toks: list[str]) -> list[tuple[int, int]]:
    """(start, end) of each element between top-level commas and semicolons."""
    spans = []
    depth = 0
    start = 0
    for i, t in enumerate(toks):
        if t in _OPEN:
            depth += 1
        elif t in _CLOSE:
            depth = max(0, depth - 1)
        elif t in (",", ";") and depth == 0:
            spans.append((start, i))
            start = i + 1
    spans.append((start, len(toks)))
    return spans


def _strip_plain_word_units(tokens: Tokens) -> Tokens:
    """`45 minutes`, `3.6 hours`, `70 miles per hour`, `5 cm^2`: plain words after a space that
    follows a number, at the end of a top-level element, are a unit when one of them has two
    letters or more. Single letters are not (`2 n`, `-4 i`, `\\frac{37}{4} m`): grading judges
    those against the gold."""
    toks = [t for t, _ in tokens]
    kinds = [k for _, k in tokens]
    remove = [False] * len(toks)
    for s, e in _top_level_elements(toks):
        pos = e - 1
        while pos >= s and toks[pos] in (" ", "."):
            pos -= 1
        longest = 0
        first = -1
        while pos >= s:
            k = pos
            if toks[k] == "}":  # an exponent ^{2}
                j = k - 1
                while j >= s and (toks[j].isdigit() or toks[j] == "-"):
                    j -= 1
                if j >= s + 1 and toks[j] == "{" and toks[j - 1] == "^":
                    k = j - 2
            elif toks[k].isdigit() and k - 1 >= s and toks[k - 1] == "^":
                k -= 2
            w = k
            while w >= s and kinds[w] == MATH and len(toks[w]) == 1 and toks[w].isalpha():
                w -= 1
            if w == k:
                break
            longest = max(longest, k - w)
            first = w + 1
            j = w
            while j >= s and toks[j] in (" ", "/"):
                j -= 1
            if j < w and j >= s and len(toks[j]) == 1 and toks[j].isalpha() and kinds[j] == MATH:
                pos = j
                continue
            break
        if first < 1 or longest < 2 or first - 1 < s or toks[first - 1] != " ":
            continue
        prefix = toks[s : first - 1]
        if any(t.isdigit() for t in prefix) and all(t in _NUMERIC for t in prefix):
            for k in range(first - 1, e):
                remove[k] = True
    return [tokens[i] for i in range(len(toks)) if not remove[i]]


def _thousands(tokens: Tokens, multiple: bool) -> Tokens:
    """Thousands separators go: an explicit one (`,\\!`, `{,}`) between digits always; plain
    commas when the whole answer, after an optional `x =`, is one number grouped by threes
    without spaces (`1,450,000`), unless the item has several answers (`100,200`). Tuples
    stay tuples (`(3,331)`)."""
    out: Tokens = []
    n = len(tokens)
    for i, (t, k) in enumerate(tokens):
        if t == THOUSANDS:
            while out and out[-1][0] == " ":
                out.pop()
            prev_digit = bool(out) and out[-1][0].isdigit()
            j = i + 1
            while j < n and tokens[j][0] == " ":
                j += 1
            if prev_digit and j < n and tokens[j][0].isdigit():
                continue
            t = ","
        out.append((t, k))
    if not multiple:
        text = "".join(t for t, _ in out).strip()
        m = re.fullmatch(r"((?:[A-Za-z]\s*=\s*)?)([-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?)", text)
        if m:
            out = [(c, MATH) for c in m.group(1) + m.group(2).replace(",", "")]
    # Spaces after an explicit separator went with it; drop those now left between digits.
    return [
        tok
        for i, tok in enumerate(out)
        if not (tok[0] == " " and 0 < i < len(out) - 1 and _digit_gap(out, i))
    ]


def _digit_gap(tokens: Tokens, i: int) -> bool:
    return tokens[i - 1][0].isdigit() and tokens[i + 1][0].isdigit() and tokens[i][1] == MATH


def _drop_degrees(tokens: Tokens) -> Tokens:
    """`^\\circ`, `^{\\circ}` (`°` and `\\degree` were dropped as tokens)."""
    out: Tokens = []
    i = 0
    n = len(tokens)
    while i < n:
        if tokens[i][0] == "^":
            j = i + 1
            while j < n and tokens[j][0] == " ":
                j += 1
            if j < n and tokens[j][0] == "\\circ":
                i = j + 1
                continue
            if j + 2 < n and [t for t, _ in tokens[j : j + 3]] == ["{", "\\circ", "}"]:
                i = j + 3
                continue
        out.append(tokens[i])
        i += 1
    return out


def _brace_arguments(tokens: Tokens) -> Tokens:
    """Write optional braces: `E_1` -> `E_{1}`, `x^2` -> `x^{2}`, `\\frac12` -> `\\frac{1}{2}`,
    `\\sqrt2` -> `\\sqrt{2}`. Spaces are dropped on the way."""
    out: Tokens = []
    pending = 0  # arguments still to come for the last \frac, \sqrt, _ or ^
    suspended: list[int] = []  # `pending` of the enclosing commands, one per open group
    i = 0
    n = len(tokens)
    while i < n:
        t, kind = tokens[i]
        i += 1
        if t == " " and kind == MATH:
            continue
        if pending and kind == MATH:
            if t == "[" and out and out[-1][0] == "\\sqrt":  # \sqrt[3]{x}: copy the index
                out.append((t, kind))
                while i < n and tokens[i][0] != "]":
                    out.append(tokens[i])
                    i += 1
                if i < n:
                    out.append(tokens[i])
                    i += 1
                continue
            if t == "}":  # a missing argument: give up on it
                pending = 0
            elif t == "{":
                suspended.append(pending - 1)
                pending = 0
                out.append((t, kind))
                continue
            elif t in _ARG_COUNT:  # x^\frac12: the inner command's arguments come next
                out.append((t, kind))
                pending = _ARG_COUNT[t]
                continue
            else:
                pending -= 1
                out.extend([("{", MATH), (t, kind), ("}", MATH)])
                continue
        if t == "{" and kind == MATH:
            suspended.append(pending)
            pending = 0
        elif t == "}" and kind == MATH and suspended:
            out.append((t, kind))
            pending = suspended.pop()
            continue
        out.append((t, kind))
        if kind == MATH and t in _ARG_COUNT:
            pending = _ARG_COUNT[t]
    return out


def _render(tokens: Tokens) -> str:
    """Join tokens (a space only after a control word followed by a letter); each run of
    `\\text{}` tokens becomes one `\\text{...}` when it holds a word of two letters or more."""
    parts: list[str] = []
    i = 0
    n = len(tokens)
    while i < n:
        t, kind = tokens[i]
        if kind == TEXT:
            j = i
            while j < n and tokens[j][1] == TEXT:
                j += 1
            words = " ".join("".join(x for x, _ in tokens[i:j]).split())
            number_and_unit = _TEXT_NUMBER_UNIT.fullmatch(words)
            if number_and_unit:  # \text{3 bolts}
                parts.append(number_and_unit.group(1).replace(",", ""))
            elif re.search(r"[A-Za-z]{2}", words):
                parts.append("\\text{" + words + "}")
            else:
                parts.append(words.replace(" ", ""))
            i = j
            continue
        i += 1
        if t == " ":
            continue
        if t == THOUSANDS:
            t = ","
        if parts and parts[-1][:1] == "\\" and parts[-1][1:].isalpha() and t[:1].isalpha():
            parts.append(" ")
        parts.append(t)
    return "".join(parts)


_TEXT_NUMBER_UNIT = re.compile(r"(-?\d[\d,]*(?:\.\d+)?) [A-Za-z][A-Za-z .'/-]*(?:\^-?\d)?")
_E_NOTATION = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])")
_DIGIT_DOT = re.compile(r"(?<=\d)\.(?![\d\\])")  # -1./3 -> -1/3; "5." -> "5"; not 0.\overline
_LEADING_DOT = re.compile(r"(?<![\d}])\.(?=\d)")  # .5 -> 0.5
_NUMPY = re.compile(r"\b(?:np|numpy|math)\.(?=[a-z])")  # np.arcsin -> \arcsin (Minerva golds)


def canonical(text: str, *, unit: str | None = None, multiple: bool = False) -> str:
    """The canonical form of one answer (see the module docstring). `unit`: a unit the
    benchmark says answers may carry (OlympiadBench's `unit`), removed from the end.
    `multiple`: the item has several answers, so `100,200` is two numbers, not 100200."""
    text = _NUMPY.sub(r"\\", text)
    tokens = _unwrap(_rewrite(tokenize(text)))
    tokens = _drop_lead_in(tokens)
    written = tokens
    tokens = _words_as_separators(tokens)
    tokens = _strip_units(tokens)
    tokens = _strip_plain_word_units(tokens)
    if _is_prose(tokens):  # sentences: compared as words, never as math
        words = " ".join("".join(t for t, _ in written).split()).rstrip(".")
        return "\\text{" + words.replace("{", "(").replace("}", ")") + "}"
    tokens = _drop_degrees(tokens)
    tokens = _thousands(tokens, multiple)
    s = _render(_brace_arguments(tokens))
    s = _E_NOTATION.sub(r"\1\\times10^{\2}", s)
    s = _DIGIT_DOT.sub("", s)
    s = _LEADING_DOT.sub("0.", s)
    s = s.replace("\\mathbb{R}", "(-\\infty,\\infty)").replace("+\\infty", "\\infty")
    s = s.replace("\\{\\}", "\\emptyset")
    s = s.strip().rstrip(".").strip()
    if s.startswith("\\approx"):
        s = s[len("\\approx") :]
    if unit:
        u = canonical(unit)
        if u and len(s) > len(u) and s.endswith(u):
            s = s[: -len(u)]
    return s
