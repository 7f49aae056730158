"""GNU range designators in array initialisers, `T a[N] = { [0 ... N - 1] = v };` (clang accepts them in C++, so
Metal does; llama.cpp zero-fills accumulators with them; g++ reads `[...]` as a lambda). For the simulator the
declaration becomes `T a[N] = {}; ::fasim::fill_range(a, lo, hi, v);` per designator (fasim_builtins.h), which is
what the initialiser means: the listed elements get the value, the rest are zero."""

from __future__ import annotations

from .lexer import match, split_top

__all__ = ["DesignatorPass"]


class DesignatorPass:
    """Mixin of the translator (translator.py), exec mode only (the strict check compiles with clang)."""

    def range_designators(self) -> None:
        toks = self.toks
        i = 0
        while i + 3 < len(toks):
            if not (toks[i].text == "=" and toks[i + 1].text == "{" and toks[i + 2].text == "["):
                i += 1
                continue
            close = match(toks, i + 1, "{", "}")
            items = split_top(toks, i + 2, close)
            fills = []
            for a, b in items:
                if toks[a].text != "[":
                    break
                rb = match(toks, a, "[", "]")
                inner = [k for k in range(a + 1, rb) if toks[k].text == "..."
                         or (toks[k].text == "." and toks[k + 1].text == "." and toks[k + 2].text == ".")]
                if not inner or rb + 1 >= b or toks[rb + 1].text != "=":
                    break
                dots = inner[0]
                dots_end = dots if toks[dots].text == "..." else dots + 2
                lo = self.text[toks[a + 1].start:toks[dots].start] if dots > a + 1 else ""
                hi = self.text[toks[dots_end].end:toks[rb].start]
                val = self.text[toks[rb + 2].start:toks[b - 1].end]
                fills.append((lo.strip(), hi.strip(), val.strip()))
            else:
                name = self._designated_name(i)
                if fills and name is not None and close + 1 < len(toks) and toks[close + 1].text == ";":
                    calls = "".join(f"; ::fasim::fill_range({name}, {lo}, {hi}, {val})" for lo, hi, val in fills)
                    self.replace_range(toks[i].start, toks[close].end, "= {}" + calls)
                    i = close + 1
                    continue
            i += 1

    def _designated_name(self, eq: int):
        """The array declared before the `=` at toks[eq] (`name[dims] =`), or None."""
        toks = self.toks
        j = eq - 1
        while j >= 0 and toks[j].text == "]":
            depth = 0
            while j >= 0:
                if toks[j].text == "]":
                    depth += 1
                elif toks[j].text == "[":
                    depth -= 1
                    if depth == 0:
                        break
                j -= 1
            j -= 1
        return toks[j].text if j >= 0 and toks[j].kind == "id" and j < eq - 1 else None
