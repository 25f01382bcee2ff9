"""Profiles and finding people (PROTOCOL.md, "Profiles and finding people").

A user is found by a prefix of their username or of their display name. Both stores keep the
same index: one entry per search term of a user, where the terms are the username, the whole
display name and each later word of it, folded (case and accents dropped), so that "ali",
"Ali" and "Äli" all find "Alice Müller", and "mul" finds her too. A search is a range read
over the terms that start with the folded query: an index seek, never a scan of the users.
"""

from __future__ import annotations

import unicodedata

from courier.domain.errors import bad_request

DISPLAY_NAME_MAX = 64  # code points
QUERY_MAX = 32
SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX = 10, 20
TERM_BYTES_MAX = 200  # a folded term is cut to this many UTF-8 bytes (a prefix still finds it)
WORDS_MAX = 8  # words of a display name indexed on their own
# The highest code point: appended to a prefix it bounds the range of terms that start with
# it (in UTF-8 byte order, which is the order of both indexes).
TOP = "\U0010ffff"


def clean_display_name(raw: str) -> str:
    """The display name as kept: NFC, surrounding spaces dropped, runs of white space one
    space; 0..64 code points of printable text (empty clears it)."""
    if len(raw) > DISPLAY_NAME_MAX:
        raise bad_request(f"display_name must be at most {DISPLAY_NAME_MAX} characters.")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if any(not c.isprintable() for c in name):
        raise bad_request("display_name must not contain control characters.")
    return name[:DISPLAY_NAME_MAX].rstrip()  # the rare character NFC writes as two


def fold(text: str) -> str:
    """Case and accents dropped, compatibility forms unified: what the index compares."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(unicodedata.normalize("NFC", bare).split())


def _cut(term: str) -> str:
    raw = term.encode()
    if len(raw) <= TERM_BYTES_MAX:
        return term
    return raw[:TERM_BYTES_MAX].decode(errors="ignore")


def search_terms(username: str, display_name: str) -> list[str]:
    """The index entries of a user, without repeats, in a stable order."""
    terms = [username]
    folded = fold(display_name)
    if folded:
        words = folded.split(" ")
        terms.append(folded)
        terms += [" ".join(words[i:]) for i in range(1, min(len(words), WORDS_MAX))]
    return list(dict.fromkeys(_cut(t) for t in terms if t))


def query_term(q: str) -> str:
    """The folded prefix a search looks for; 1..32 characters before folding."""
    if not 1 <= len(q) <= QUERY_MAX:
        raise bad_request(f"q must be 1..{QUERY_MAX} characters.")
    term = fold(q)
    if not term:
        raise bad_request("q must contain a letter or a digit.")
    return _cut(term)
