"""multipart/form-data bodies held in memory, split into text fields and file uploads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilePart:
    """One uploaded file of a multipart body: its filename and its bytes (a view into the body)."""

    filename: str | None
    data: memoryview | bytes


TEXT_CHARSETS = {"utf-8", "utf8", "ascii", "us-ascii", "latin-1", "latin1", "iso-8859-1"}


def parse_multipart(
    body: bytes, content_type: str, max_files: int, max_fields: int, max_field_bytes: int = 1024 * 1024
) -> list[tuple[str, str | FilePart]]:
    """Split a multipart/form-data body held in memory into (name, text or FilePart) in body order.

    The same parser and header rules as Starlette's form parsing (python-multipart; a part with a
    `filename` is a file), without its copies: each file is a view into `body`, not bytes copied into
    a spooled temporary file and read back out. Raises ValueError on a malformed body or too many parts.
    """
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(content_type)
    if b"boundary" not in params:
        raise ValueError("Missing boundary in multipart.")
    charset = params.get(b"charset", b"utf-8").decode("latin-1").strip().lower()
    if charset not in TEXT_CHARSETS:  # any Python codec would do otherwise, some slow or unsafe
        raise ValueError(f"charset {charset[:40]!r} is not supported; send utf-8")

    def text(raw: bytes) -> str:
        return raw.decode(charset, errors="replace")

    view = memoryview(body)
    items: list[tuple[str, str | FilePart]] = []
    header_name: list[bytes] = []
    header_value: list[bytes] = []
    part: dict = {}
    counts = {"files": 0, "fields": 0}

    def on_part_begin() -> None:
        part.clear()
        part.update(disposition=b"", pieces=[], size=0, file=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        if b"".join(header_name).lower() == b"content-disposition":
            if part["disposition"]:  # which one counts is up to the parser: refuse instead of guessing
                raise ValueError("a part has two Content-Disposition headers")
            part["disposition"] = b"".join(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["disposition"])
        if b"name" not in options:
            raise ValueError('The Content-Disposition header field "name" must be provided.')
        part["name"] = text(options[b"name"])
        if b"filename" in options:
            counts["files"] += 1
            if counts["files"] > max_files:
                raise ValueError(f"Too many files. Maximum number of files is {max_files}.")
            part.update(file=True, filename=text(options[b"filename"]))
        else:
            counts["fields"] += 1
            if counts["fields"] > max_fields:
                raise ValueError(f"Too many fields. Maximum number of fields is {max_fields}.")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["size"] += end - start
        if not part["file"] and part["size"] > max_field_bytes:
            raise ValueError(f"Part exceeded maximum size of {max_field_bytes // 1024}KB.")
        # pieces of the body stay views; the parser's own look-behind buffer is copied
        part["pieces"].append(view[start:end] if data is body else bytes(data[start:end]))

    def on_part_end() -> None:
        pieces = part["pieces"]
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        items.append((part["name"], FilePart(part["filename"], data) if part["file"] else text(bytes(data))))

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    parser.write(body)
    parser.finalize()
    return items
