"""Report pages: each page registers itself; the report looks its page up in the study's own description.

A study's ``meta`` (stored in ``meta.json`` with its results) names its page: ``meta["page"]``. A
:class:`Page` declares beside its code:

- ``section(frame, meta, records, out_dir, tables) -> list[str]``: the study's part of ``report.md``
  (tables, sentences, figure links; figures are written into ``out_dir``);
- ``needs_axis``: the page reads the study's swept field(s) (``meta["axis"]``);
- ``needs_variant``: the records are training records with a ``variant`` field;
- ``columns``: the CSV column order of its records (None: the config fields, ``dataset``, results);
- ``sort_by``: the fields its records are sorted by (None: the study's axes, then variant and seed).

The built-in pages register in :mod:`.sections` (``headline``, ``sweep``, ``grid``, ``theory``) and
:mod:`.cells` (``cells``, ``match``); a new page is one :func:`register_page` call in any module that
is imported before the report is written.

**Old meta.** The key was called ``layout`` before (a word the core uses for storage classes), and a
meta.json written before studies described themselves names only the Boolean study: both are read by
:func:`page_name` (the one place that knows old spellings), so every stored folder keeps its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The key of a study's meta that names its page; :data:`OLD_PAGE_KEY` is its spelling before.
PAGE_KEY = "page"
OLD_PAGE_KEY = "layout"

#: Pages of a meta.json written before studies carried their page (the Boolean studies' names then).
STORED_STUDY_PAGES: dict[str, str] = {"neurons": "sweep", "clauses": "sweep", "alpha": "sweep", "data": "sweep",
                                      "headline": "headline", "metrics": "grid", "theory": "theory"}

Section = Callable[..., list[str]]


@dataclass(frozen=True)
class Page:
    """A registered report page (see the module docstring)."""

    name: str
    section: Section
    needs_axis: bool = False
    needs_variant: bool = True
    columns: tuple[str, ...] | None = None
    sort_by: tuple[str, ...] | None = None
    description: str = ""


class PageRegistry(Mapping[str, Page]):
    """Name -> :class:`Page`, in registration order."""

    def __init__(self) -> None:
        self._pages: dict[str, Page] = {}

    def __getitem__(self, name: str) -> Page:
        return self._pages[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pages)

    def __len__(self) -> int:
        return len(self._pages)

    def __repr__(self) -> str:
        return f"PageRegistry({', '.join(self._pages)})"

    def add(self, page: Page, *, replace: bool = False) -> Page:
        if not replace and page.name in self._pages:
            raise ValueError(f"a report page named {page.name!r} is already registered; pass replace=True to "
                             "register_page to replace it")
        self._pages[page.name] = page
        return page

    def remove(self, name: str) -> None:
        """Forget a page (tests register temporary ones)."""
        self._pages.pop(name, None)


#: Every registered report page.
PAGES = PageRegistry()


def register_page(name: str, section: Section, *, needs_axis: bool = False, needs_variant: bool = True,
                  columns: Sequence[str] | None = None, sort_by: Sequence[str] | None = None,
                  description: str = "", replace: bool = False) -> Page:
    """Register the report page ``name`` (see the module docstring); returns it."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a report page's name must be an identifier; got {name!r}")
    if not callable(section):
        raise ValueError(f"the section of report page {name!r} must be callable; got {section!r}")
    return PAGES.add(Page(name, section, needs_axis, needs_variant, None if columns is None else tuple(columns),
                          None if sort_by is None else tuple(sort_by), description), replace=replace)


def page_name(meta: Mapping[str, Any]) -> str | None:
    """The page a study's meta names: ``page``, else the old key ``layout``, else (a meta.json from before
    studies described themselves) the page of its stored Boolean study name; None if it names none."""
    return meta.get(PAGE_KEY) or meta.get(OLD_PAGE_KEY) or STORED_STUDY_PAGES.get(meta.get("study"))


def page_of(meta: Mapping[str, Any]) -> Page:
    """The registered page of a study's meta; ValueError naming the study and the registered pages."""
    _load_builtin_pages()
    name = page_name(meta)
    if name not in PAGES:
        raise ValueError(f"unknown study {meta.get('study')!r}: no report page for it (meta['page'] = {name!r}; "
                         f"pages: {', '.join(sorted(PAGES))})")
    return PAGES[name]


def with_page_key(meta: Mapping[str, Any]) -> dict:
    """``meta`` with its page under :data:`PAGE_KEY` (an old ``layout`` key is read and dropped)."""
    meta = dict(meta)
    if OLD_PAGE_KEY in meta:
        old = meta.pop(OLD_PAGE_KEY)
        meta.setdefault(PAGE_KEY, old)
    return meta


def _load_builtin_pages() -> None:
    """The package's own pages register on import of their modules."""
    from . import cells, sections  # noqa: F401
