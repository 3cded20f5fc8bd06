"""Catalog ingestion: CSV (uri,label[,group]) or image folder (root/<group>/<species>/<file>), local or s3://."""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec
import yaml

from fieldguide.errors import CatalogError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class CatalogRow:
    """One catalog entry before QA: where the image is, what it is said to be."""

    line: int
    uri: str
    label: str
    group: str = ""


def is_remote(uri: str) -> bool:
    """True for URIs that fsspec resolves through a remote filesystem (s3://, gs://, ...)."""
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem and bare path for `uri`; S3 settings come from `storage_options` or boto's env."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """Read a whole file; raises FileNotFoundError when it does not exist."""
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as fh:
        return fh.read()


def resolve_uri(uri: str, base: str) -> str:
    """Resolve a catalog `uri` relative to the catalog's directory `base` (local path or s3:// prefix)."""
    if "://" in uri or Path(uri).is_absolute():
        return uri
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, uri))}"
    return str((Path(base) / uri).resolve())


def _parent(source: str) -> str:
    return source.rsplit("/", 1)[0] if is_remote(source) else str(Path(source).resolve().parent)


def allowed_roots(source: str, extra: Iterable[str] = (), storage_options: dict[str, Any] | None = None) -> list[str]:
    """Where the rows of catalog `source` may point besides s3://: its own folder and the `extra` roots, normalised.

    An empty `source` (rows without a catalog) allows only the `extra` roots.
    """
    roots = [catalog_dir(source, storage_options)] if source else []
    return [forms[0] for forms in (_forms(r, decoded=False) for r in [*roots, *extra]) if forms]


def uri_refusal(uri: str, roots: Sequence[str]) -> str:
    """Why `uri` must not be read ('' when it may be): it must be s3:// or lie under one of `roots`.

    Lexical, plus symlink resolution of local paths: never opens the file or contacts a host. A remote URI must
    stay under a root both as written and percent-decoded, so an encoded `..` or `/` cannot climb out of it.
    """
    if "::" in uri:
        return f"{uri}: chained fsspec URIs are not allowed"
    if uri.startswith("s3://"):
        return ""
    forms = _forms(uri)
    if not forms:
        return f"{uri}: not an absolute path or a URI"
    if all(any(_under(form, root) for root in roots) for form in forms):
        return ""
    return f"{uri} is not s3:// and not under the catalog's folder or rules.allowed_roots ({', '.join(roots) or '-'})"


def _forms(uri: str, decoded: bool = True) -> list[str]:
    """Normalised forms of `uri`; [] when it is neither an absolute local path nor a `scheme://` URI.

    A local path is resolved (symlinks followed); a URI becomes `scheme://host/path` with `..` folded, as written
    and, with `decoded`, percent-decoded too.
    """
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    try:
        if scheme in ("", "file", "local"):
            path = Path(uri.split("://", 1)[1] if scheme else uri)
            return [str(path.resolve())] if path.is_absolute() else []
        parts = urlsplit(uri)
        query = f"?{parts.query}" if parts.query else ""
        paths = [parts.path, unquote(parts.path).replace("\\", "/")] if decoded else [parts.path]
        return [f"{parts.scheme}://{parts.netloc}{posixpath.normpath(p or '/')}{query}" for p in paths]
    except (OSError, RuntimeError, ValueError):  # NUL bytes, symlink loops, malformed URLs
        return []


def _under(target: str, root: str) -> bool:
    if "://" not in target and "://" not in root:
        return Path(target).is_relative_to(root)
    return target == root or target.startswith(root.rstrip("/") + "/")


def catalog_dir(source: str, storage_options: dict[str, Any] | None = None) -> str:
    """The directory that relative URIs in `source` are resolved against (the folder itself for folder catalogs)."""
    fs, path = filesystem(source, storage_options)
    if fs.isdir(path):
        return source.rstrip("/") if is_remote(source) else str(Path(source).resolve())
    return _parent(source)


def read_catalog(source: str, storage_options: dict[str, Any] | None = None) -> Iterator[CatalogRow]:
    """Stream catalog rows from a CSV file or an image folder, local or remote.

    Raises:
        CatalogError: when the catalog is missing, empty, or its columns are wrong.
    """
    fs, path = filesystem(source, storage_options)
    try:
        exists, isdir = fs.exists(path), fs.isdir(path)
    except Exception as exc:  # noqa: BLE001 - e.g. bad credentials or endpoint for s3://
        raise CatalogError(f"catalog {source} could not be reached: {exc}") from exc
    if not exists:
        raise CatalogError(f"catalog not found: {source} (give a CSV with uri,label[,group] or an image folder)")
    if isdir:
        yield from _read_folder(fs, path, source)
    else:
        yield from _read_csv(fs, path, source)


def _read_csv(fs: fsspec.AbstractFileSystem, path: str, source: str) -> Iterator[CatalogRow]:
    base = _parent(source)
    with fs.open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        try:
            columns = [c.strip() for c in (reader.fieldnames or [])]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise CatalogError(f"catalog {source} is not a UTF-8 CSV file ({exc})") from exc
        if not columns:
            raise CatalogError(f"catalog {source} is empty (expected a header row: uri,label[,group])")
        missing = [c for c in ("uri", "label") if c not in columns]
        if missing:
            raise CatalogError(f"catalog {source} lacks column(s) {', '.join(missing)}; found: {', '.join(columns)}")
        reader.fieldnames = columns
        count = 0
        try:
            for count, row in enumerate(reader, start=1):
                uri = (row.get("uri") or "").strip()
                yield CatalogRow(
                    line=count + 1,
                    uri=resolve_uri(uri, base) if uri else "",
                    label=(row.get("label") or "").strip(),
                    group=(row.get("group") or "").strip(),
                )
        except (UnicodeDecodeError, csv.Error) as exc:
            raise CatalogError(f"catalog {source} line {count + 2}: unreadable CSV ({exc})") from exc
        if count == 0:
            raise CatalogError(f"catalog {source} has a header but no rows")


def _read_folder(fs: fsspec.AbstractFileSystem, path: str, source: str) -> Iterator[CatalogRow]:
    root = path.rstrip("/")
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    count = 0
    for file in sorted(fs.find(root)):
        rel = posixpath.relpath(file, root)
        parts = rel.split("/")
        if len(parts) != 3 or parts[-1].startswith("."):
            continue
        group, species, name = parts
        if posixpath.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
            continue
        count += 1
        yield CatalogRow(line=count, uri=prefix + file, label=species, group=group)
    if count == 0:
        raise CatalogError(f"image folder {source} holds no images laid out as <group>/<species>/<file>")


@dataclass
class CatalogSnapshot:
    """The rows of a catalog at ingest time, with the taxonomy that labels them (the `catalog_rows` artifact)."""

    source: str
    taxonomy_source: str
    taxonomy: dict[str, str] | None
    rows: list[CatalogRow]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "source": self.source,
            "taxonomy_source": self.taxonomy_source,
            "taxonomy": self.taxonomy,
            "rows": [[r.line, r.uri, r.label, r.group] for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogSnapshot:
        """Inverse of to_dict."""
        return cls(data["source"], data["taxonomy_source"], data["taxonomy"], [CatalogRow(*r) for r in data["rows"]])


def snapshot(source: str, taxonomy: str = "", storage_options: dict[str, Any] | None = None) -> CatalogSnapshot:
    """Read a catalog's rows and its taxonomy (given, or taxonomy.yaml beside the catalog)."""
    tax_path = taxonomy or default_taxonomy(source, storage_options)
    tax = load_taxonomy(tax_path, storage_options) if tax_path else None
    return CatalogSnapshot(source, tax_path, tax, list(read_catalog(source, storage_options)))


def fingerprint(
    source: str, taxonomy: str = "", storage_options: dict[str, Any] | None = None, extra_roots: Iterable[str] = ()
) -> str:
    """A cheap content fingerprint: catalog and taxonomy bytes plus size/mtime (or ETag) of every listed file.

    Used as a step parameter so that ZenML's cache is invalidated when any image changes on disk, without
    reading the images. One directory listing per folder, not one request per file; folders of rows that QA
    refuses (see `uri_refusal`, with `extra_roots` as rules.allowed_roots) are never listed.
    """
    h = hashlib.sha256()
    tax_path = taxonomy or default_taxonomy(source, storage_options)
    fs, path = filesystem(source, storage_options)
    if not fs.isdir(path):
        h.update(read_bytes(source, storage_options))
    uris = [r.uri for r in read_catalog(source, storage_options)]
    if tax_path:
        h.update(read_bytes(tax_path, storage_options))
    listings: dict[str, dict[str, str]] = {}
    roots = allowed_roots(source, extra_roots, storage_options)
    for uri in uris:
        if not uri:
            continue
        if uri_refusal(uri, roots):
            h.update(f"{uri}\tnot allowed\n".encode())
            continue
        directory, name = uri.rsplit("/", 1) if "/" in uri else ("", uri)
        if directory not in listings:
            listings[directory] = _listing(directory, storage_options)
        h.update(f"{uri}\t{listings[directory].get(name, 'missing')}\n".encode())
    return h.hexdigest()[:24]


def _listing(directory: str, storage_options: dict[str, Any] | None) -> dict[str, str]:
    try:
        fs, path = filesystem(directory, storage_options)
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for e in entries:
        stamp = e.get("ETag") or e.get("etag") or f"{e.get('size')}:{e.get('mtime') or e.get('LastModified')}"
        out[e["name"].rstrip("/").rsplit("/", 1)[-1]] = str(stamp)
    return out


def load_taxonomy(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Read a taxonomy YAML mapping group -> [species, ...] into species -> group.

    Raises:
        CatalogError: when the file is malformed or a species is listed under two groups.
    """
    try:
        data = yaml.safe_load(read_bytes(path, storage_options)) or {}
    except FileNotFoundError:
        raise CatalogError(f"taxonomy not found: {path}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"taxonomy {path} is not valid YAML ({exc})") from None
    groups = data.get("groups", data) if isinstance(data, dict) else None
    if not isinstance(groups, dict):
        raise CatalogError(f"taxonomy {path} must map group names to lists of species")
    species_to_group: dict[str, str] = {}
    for group, species_list in groups.items():
        if not isinstance(species_list, list):
            raise CatalogError(f"taxonomy {path}: group {group!r} must list its species")
        for species in species_list:
            other = species_to_group.get(str(species))
            if other is not None and other != str(group):
                raise CatalogError(f"taxonomy {path}: species {species!r} is listed in both {other!r} and {group!r}")
            species_to_group[str(species)] = str(group)
    return species_to_group


def default_taxonomy(source: str, storage_options: dict[str, Any] | None = None) -> str:
    """taxonomy.yaml beside the catalog when it exists, else ''."""
    base = catalog_dir(source, storage_options)
    candidate = f"{base.rstrip('/')}/taxonomy.yaml"
    fs, path = filesystem(candidate, storage_options)
    return candidate if fs.exists(path) else ""
