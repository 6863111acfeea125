"""Resumable, verified HTTP downloads shared by every downloader in data/.

A download streams into `<name>.part` beside the final file and is renamed to `<name>` only once it
is complete (the byte count the server announced) and matches its checksum when one is known. So a
final name can always be trusted, and an interrupted transfer resumes from the `.part` file with an
HTTP Range request. The server's validator (ETag or Last-Modified) is kept in `<name>.part.meta` and
sent back as If-Range, so a file that changed on the server since ("latest" Wikipedia dumps do) is
fetched again from the start instead of being spliced onto stale bytes.

Redirects are followed to http(s) only (urllib alone would follow one to ftp://, where none of the
above holds). When the server announces no length and no checksum or size is known, the end of the
body is confirmed by asking for the bytes after it (416 = there are none); a server that cannot
answer that is refused rather than trusted, since a cut connection then looks like a complete file.
"""
from __future__ import annotations

import bz2
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from atomic_io import atomic_path
from input_checks import InputError

CHUNK_BYTES = 1 << 20
USER_AGENT = "bert-pytorch-data-prep/1.0 (+https://github.com/NVIDIA/DeepLearningExamples)"


class DownloadError(InputError):
    """A download that could not be completed or verified (one-line message)."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest: `algorithm` is any hashlib name (md5, sha1, sha256)."""

    algorithm: str
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: Checksum | None, name: str | None = None) -> None:
    """Raise DownloadError naming `name` (default: the file's name) when the digest differs."""
    if expected is None:
        return
    actual = file_digest(path, expected.algorithm)
    if actual.lower() != expected.hexdigest.lower():
        raise DownloadError(
            f"{name or path.name}: {expected.algorithm} mismatch (expected {expected.hexdigest}, got {actual}); "
            "the file is corrupt or has changed upstream"
        )


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _unreachable(url: str, exc: BaseException) -> DownloadError:
    reason = getattr(exc, "reason", exc)
    return DownloadError(f"cannot reach {_host(url)}: {reason} (are you offline? URL {url})")


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http and https only (urllib's default also follows them to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise DownloadError(f"{req.full_url} redirects to {newurl}: only http and https redirects are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _open(url: str, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    try:
        return _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc  # type: ignore[return-value]  # caller handles "range not satisfiable"
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(url, exc) from None


def fetch_bytes(url: str, timeout: float = 60.0, max_bytes: int = 16 << 20) -> bytes:
    """A small file (checksum lists, dev ids) straight into memory."""
    response = _open(url, {}, timeout)
    if getattr(response, "code", 200) == 416:
        raise DownloadError(f"HTTP 416 for {url}")
    with response:
        try:
            data = response.read(max_bytes + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _unreachable(url, exc) from None
    if len(data) > max_bytes:
        raise DownloadError(f"{url}: larger than {max_bytes} bytes, refusing to read it into memory")
    return data


# --------------------------------------------------------------------------------------------
# Resumable download
# --------------------------------------------------------------------------------------------


def _read_meta(meta_path: Path) -> dict:
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _validator(response: http.client.HTTPResponse) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # weak validators are not allowed in If-Range
        return etag
    return response.headers.get("Last-Modified")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    content_range = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Full size of the remote file from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return int(length) + offset
    return None


def _stream_to(response: http.client.HTTPResponse, part: Path, append: bool, total: int | None, label: str) -> None:
    from tqdm import tqdm

    start = part.stat().st_size if append and part.exists() else 0
    with open(part, "ab" if append else "wb") as out, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, desc=label, disable=None, leave=False
    ) as bar:
        while True:
            block = response.read(CHUNK_BYTES)
            if not block:
                break
            out.write(block)
            bar.update(len(block))
        out.flush()
        os.fsync(out.fileno())


def _attempt(url: str, part: Path, meta_path: Path, timeout: float, label: str) -> int | None:
    """One request: resume or restart `part`; return the expected total size (None if unknown)."""
    meta = _read_meta(meta_path)
    offset = part.stat().st_size if part.exists() else 0
    headers = {}
    if offset and meta.get("url") == url:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    else:
        offset = 0
    response = _open(url, headers, timeout)
    with contextlib.closing(response):
        if response.status == 416:
            # The .part already holds every byte (or is longer than the remote file): ask for it whole.
            expected = meta.get("total")
            if expected is not None and offset == expected:
                return expected
            part.unlink(missing_ok=True)
            raise _Retry("server rejected the resume range; restarting from zero")
        append = response.status == 206 and _range_start(response) == offset
        if not append:
            offset = 0  # 200: the server ignored Range, or If-Range said the file changed
            if response.status == 206:
                part.unlink(missing_ok=True)
                raise _Retry("server answered a different range than requested; restarting")
        total = _total_size(response, offset)
        meta = {"url": url, "validator": _validator(response), "total": total}
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
        try:
            _stream_to(response, part, append, total, label)
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(f"transfer interrupted ({exc.__class__.__name__}: {exc})") from None
    return total


class _Retry(Exception):
    """A transfer that stopped early; the .part file is kept for the next attempt."""


def _server_confirms_end(url: str, got: int, meta_path: Path, timeout: float) -> bool | None:
    """With no announced length: ask for the bytes after `got`.

    True: the server has none (416); False: it has more (the transfer was cut); None: it cannot say
    (it ignores Range requests or the file changed).
    """
    meta = _read_meta(meta_path)
    headers = {"Range": f"bytes={got}-"}
    if meta.get("validator"):
        headers["If-Range"] = meta["validator"]
    response = _open(url, headers, timeout)
    with contextlib.closing(response):
        if response.status == 416:
            return True
        if response.status == 206 and _range_start(response) == got:
            return False
    return None


def download(
    url: str,
    destination: str | os.PathLike,
    checksum: Checksum | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff_s: float = 2.0,
) -> Path:
    """Download `url` to `destination` unless it is already there; resume a previous `.part`.

    `size` and `checksum` are checked when given; otherwise the byte count must equal the server's
    Content-Length. Raises DownloadError (one line) on an unreachable host, an HTTP error, a
    transfer still short after `retries` resumptions, or a checksum mismatch (the corrupt `.part`
    is deleted so the next run starts clean).
    """
    destination = Path(destination)
    if destination.exists():
        # Only complete files ever get the final name, but it may predate us (wget left partial
        # files under the final name): check what can be checked cheaply.
        _check_existing(destination, checksum, size)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    meta_path = destination.with_name(destination.name + ".part.meta")
    message = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * attempt)
        try:
            total = _attempt(url, part, meta_path, timeout, destination.name)
        except _Retry as exc:
            message = str(exc)
            continue
        got = part.stat().st_size if part.exists() else 0
        expected = size if size is not None else total
        if expected is None and checksum is None:
            end = _server_confirms_end(url, got, meta_path, timeout)
            if end is False:
                message = f"transfer stopped at {got} bytes; the server has more"
                continue
            if end is None:
                part.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                raise DownloadError(
                    f"{destination.name}: {_host(url)} sent no length and cannot confirm where the file ends "
                    "(no Range support), so a cut transfer would look complete; give a checksum or download it by hand"
                )
        if expected is not None and got < expected:
            message = f"transfer stopped at {got} of {expected} bytes"
            continue
        if expected is not None and got > expected:
            part.unlink()
            raise DownloadError(f"{destination.name}: received {got} bytes but expected {expected}; deleted, re-run")
        _finish(part, meta_path, destination, checksum)
        return destination
    raise DownloadError(
        f"{destination.name}: incomplete download from {_host(url)} ({message}); "
        f"partial data kept in {part.name}, re-run to resume"
    )


def _check_existing(destination: Path, checksum: Checksum | None, size: int | None) -> None:
    if size is not None and destination.stat().st_size != size:
        raise DownloadError(
            f"{destination}: has {destination.stat().st_size} bytes, expected {size}; delete it and re-run"
        )
    try:
        verify_checksum(destination, checksum)
    except DownloadError as exc:
        raise DownloadError(f"{exc}; delete {destination} and re-run") from None


def _finish(part: Path, meta_path: Path, destination: Path, checksum: Checksum | None) -> None:
    try:
        verify_checksum(part, checksum, name=destination.name)
    except DownloadError:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        raise
    os.replace(part, destination)
    meta_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Unpacking (each result appears under its final name only when complete)
# --------------------------------------------------------------------------------------------


def _safe_members(archive: zipfile.ZipFile, archive_path: Path) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    for member in members:
        parts = Path(member.filename).parts
        if member.filename.startswith(("/", "\\")) or ".." in parts:
            raise DownloadError(f"{archive_path.name}: unsafe member path {member.filename!r}")
    return members


def extract_zip(archive_path: str | os.PathLike, into: str | os.PathLike) -> list[Path]:
    """Unpack a zip into `into`; every top-level entry is renamed into place only after all of it is out.

    Returns the top-level paths. Existing top-level entries of the same name are replaced.
    """
    archive_path, into = Path(archive_path), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive_path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise DownloadError(f"{archive_path.name}: CRC error in member {bad}; delete it and re-download")
            members = _safe_members(archive, archive_path)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{archive_path.stem}.", dir=into))
            try:
                archive.extractall(staging, members)
                tops = sorted({Path(m.filename).parts[0] for m in members if Path(m.filename).parts})
                for name in tops:
                    target = into / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
                    os.replace(staging / name, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive_path.name}: not a valid zip file ({exc}); delete it and re-download") from None
    return [into / name for name in tops]


def decompress_bz2(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Stream-decompress a .bz2 file (what `bzip2 -dk` did in the original), atomically."""
    source, destination = Path(source), Path(destination)
    if destination.exists():
        return destination
    try:
        with bz2.open(source, "rb") as src, atomic_path(destination) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK_BYTES)
    except (OSError, EOFError) as exc:
        raise DownloadError(f"{source.name}: cannot decompress ({exc}); the download may be damaged") from None
    return destination


def host_is_reachable(url: str, timeout: float = 5.0) -> bool:
    """Cheap connectivity probe (TCP connect to the URL's host and port)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
