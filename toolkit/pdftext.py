"""Text of a PDF file with PyMuPDF, and the checks that turn a bad PDF into a clear error.

`pdf_problems()` is cheap enough for manifest validation: it opens the file, checks the header,
encryption, damage and page range, and reads pages only until one holds text.  `extract()` reads
the chosen pages (`page.get_text()`, reading order as MuPDF gives it), joins them with a newline
and, by default, collapses every whitespace run to one space, so the model sees running prose
instead of the PDF's hard line breaks.  `split_words()` cuts that text at whitespace: a word is a
maximal run of non-whitespace characters (punctuation stays attached, numbers are words — the
upstream script dropped them, so its context was not the document's text).  Character offsets
are Python `str` indices (code points) into the extracted text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

HEADER_BYTES = 1024  # MuPDF, like Acrobat, accepts junk before `%PDF-` within the first 1 KiB
REPAIR = "repair or re-export it (e.g. `mutool clean in.pdf out.pdf`) and point pdf_path at the new copy"


class PdfError(ToolkitError):
    """The PDF cannot be used: missing, not a PDF, encrypted, damaged, or without text."""

    exit_code = 2


@dataclass(frozen=True)
class PdfText:
    """The extracted text of pages `first_page..last_page` (1-based, inclusive)."""

    text: str
    page_starts: tuple[int, ...]  # char offset in `text` where each page's text begins
    first_page: int
    last_page: int
    page_count: int
    sha256: str  # of the file's bytes

    def page_of(self, offsets: Any) -> Any:
        """1-based page number of each char offset (numpy array in, numpy array out)."""
        import numpy as np

        index = np.searchsorted(np.asarray(self.page_starts), np.asarray(offsets), side="right") - 1
        return (index + self.first_page).astype(np.int32)


def _open(path: str) -> Any:
    """The opened document, or PdfError saying what is wrong with the file."""
    import pymupdf

    file = Path(path)
    if not file.exists():
        raise PdfError(f"{path}: no such file; check pdf_path (a relative path is read from the manifest's folder)")
    if not file.is_file():
        raise PdfError(f"{path} is not a file; pdf_path must name a .pdf file")
    try:
        with open(file, "rb") as handle:
            head = handle.read(HEADER_BYTES)
    except OSError as err:
        raise PdfError(f"{path}: cannot read: {err.strerror}; check the file's permissions") from None
    if b"%PDF-" not in head:
        raise PdfError(
            f"{path} is not a PDF (no %PDF- header in its first {HEADER_BYTES} bytes); pdf_path must name a PDF file"
        )
    pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF would print repair messages on stderr
    pymupdf.TOOLS.mupdf_display_warnings(False)
    try:
        doc = pymupdf.open(str(file), filetype="pdf")
    except Exception as err:  # pymupdf raises FileDataError, RuntimeError, ValueError for bad files
        raise PdfError(f"{path} is a damaged PDF that MuPDF cannot open ({err}); {REPAIR}") from None
    if doc.needs_pass:
        doc.close()
        raise PdfError(
            f"{path} is encrypted with a password; save a decrypted copy "
            "(e.g. `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`) and point pdf_path at it"
        )
    if doc.is_repaired:
        doc.close()
        raise PdfError(
            f"{path} is a damaged PDF (MuPDF had to rebuild its structure, so text may be missing); {REPAIR}"
        )
    return doc


def _last(doc: Any, last_page: int | None) -> int:
    return doc.page_count if last_page is None else last_page


def pdf_problems(path: str, first_page: int, last_page: int | None) -> list[tuple[str, str]]:
    """(field, message) pairs for `Params.check()`: empty when the pages hold extractable text."""
    try:
        doc = _open(path)
    except PdfError as err:
        return [("pdf_path", str(err))]
    try:
        if first_page > doc.page_count:
            return [
                (
                    "first_page",
                    f"{path} has {doc.page_count} page(s); first_page must be <= {doc.page_count}, got {first_page}",
                )
            ]
        if last_page is not None and last_page > doc.page_count:
            return [
                (
                    "last_page",
                    f"{path} has {doc.page_count} page(s); last_page must be <= {doc.page_count}, got {last_page}",
                )
            ]
        for number in range(first_page, _last(doc, last_page) + 1):
            if doc[number - 1].get_text().strip():
                return []
        return [("pdf_path", _no_text(path, first_page, _last(doc, last_page)))]
    except Exception as err:  # a page that fails to load: damaged beyond what open() noticed
        return [("pdf_path", f"{path} is a damaged PDF: reading its pages failed ({err}); {REPAIR}")]
    finally:
        doc.close()


def _no_text(path: str, first: int, last: int) -> str:
    return (
        f"{path} has no extractable text on pages {first}-{last} (scanned images or blank pages?); "
        "run OCR first (e.g. `ocrmypdf in.pdf out.pdf`) or choose pages with text (first_page, last_page)"
    )


def extract(path: str, first_page: int = 1, last_page: int | None = None, normalize_whitespace: bool = True) -> PdfText:
    """The text of the chosen pages; PdfError for every problem `pdf_problems()` reports."""
    doc = _open(path)
    try:
        last = _last(doc, last_page)
        if not 1 <= first_page <= last <= doc.page_count:
            raise PdfError(f"{path} has {doc.page_count} page(s); pages {first_page}-{last} are out of range")
        pages = [doc[n - 1].get_text() for n in range(first_page, last + 1)]
        count = doc.page_count
    finally:
        doc.close()
    if normalize_whitespace:
        pages = [" ".join(page.split()) for page in pages]
    starts, parts, offset = [], [], 0
    for page in pages:
        starts.append(offset)
        parts.append(page)
        offset += len(page) + 1
    text = ("\n" if not normalize_whitespace else " ").join(parts)
    if not text.strip():
        raise PdfError(_no_text(path, first_page, last))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return PdfText(
        text=text, page_starts=tuple(starts), first_page=first_page, last_page=last, page_count=count, sha256=digest
    )


def split_words(text: str) -> tuple[list[str], Any, Any]:
    """(words, char starts, char ends) of the maximal non-whitespace runs of `text`."""
    import numpy as np

    matches = list(re.finditer(r"\S+", text))
    starts = np.fromiter((m.start() for m in matches), dtype=np.int64, count=len(matches))
    ends = np.fromiter((m.end() for m in matches), dtype=np.int64, count=len(matches))
    return [m.group() for m in matches], starts, ends
