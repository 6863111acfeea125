"""Downloads against a real HTTP server on 127.0.0.1 (with Range / If-Range support); no internet.

Covers data/download_utils.py (resume after a cut transfer, checksum and size checks, offline and
HTTP errors, safe unpacking) and the downloaders that can be pointed at a local server.
"""
from __future__ import annotations

import bz2
import hashlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile

import pytest
from conftest import ROOT, script_env, shared_path

from data import GLUEDownloader, WikiDownloader, download_utils
from data import GooglePretrainedWeightDownloader as google
from data.BooksDownloader import BooksDownloader
from data.download_utils import Checksum, DownloadError, decompress_bz2, download, extract_zip


class FileServer:
    """Serves `files` (url path -> bytes). `cut_after[path] = n` sends only n body bytes once, then hangs up.

    `send_length = False` leaves Content-Length out (the body ends when the connection closes, so a cut
    looks like a normal end); `redirects[path] = location` answers 302 with that Location.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.honour_ranges = True
        self.send_length = True
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                etag = '"' + hashlib.sha1(body).hexdigest() + '"'
                start = self._range_start(etag)
                if start is not None and start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if start is None:
                    self.send_response(200)
                    start = 0
                else:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                if server.send_length:
                    self.send_header("Content-Length", str(len(body) - start))
                else:
                    self.close_connection = True
                self.send_header("ETag", etag)
                self.end_headers()
                payload = body[start:]
                cut = server.cut_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

            def _range_start(self, etag: str) -> int | None:
                header = self.headers.get("Range")
                if not server.honour_ranges or not header or not header.startswith("bytes="):
                    return None
                if self.headers.get("If-Range") not in (None, etag):
                    return None  # the file changed: send it whole
                return int(header[len("bytes="):].split("-")[0])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def ranges_requested(self, path: str) -> list[str]:
        return [r.get("Range") for r in self.requests if r["path"] == path]


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PAYLOAD = os.urandom(3 * download_utils.CHUNK_BYTES + 12345)


def test_resume_after_cut_transfer_uses_range_and_gives_exact_bytes(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.cut_after["/big.bin"] = 1_000_000
    target = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match=r"incomplete download .*re-run to resume"):
        download(server.url("/big.bin"), target, retries=0)
    part = tmp_path / "big.bin.part"
    assert not target.exists(), "a cut transfer must never appear under the final name"
    assert part.stat().st_size == 1_000_000
    assert download(server.url("/big.bin"), target, checksum=Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest()))
    assert target.read_bytes() == PAYLOAD
    assert server.ranges_requested("/big.bin") == [None, "bytes=1000000-"]
    assert not part.exists() and not (tmp_path / "big.bin.part.meta").exists()


def test_retries_resume_within_one_call(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after["/f.bin"] = 777
    path = download(server.url("/f.bin"), tmp_path / "f.bin", retries=2, backoff_s=0)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges_requested("/f.bin") == [None, "bytes=777-"]


def test_changed_remote_file_is_fetched_again_not_spliced(server, tmp_path):
    server.files["/latest.bin"] = PAYLOAD
    server.cut_after["/latest.bin"] = 5000
    with pytest.raises(DownloadError):
        download(server.url("/latest.bin"), tmp_path / "latest.bin", retries=0)
    new = os.urandom(len(PAYLOAD) - 100)  # a new dump was published meanwhile
    server.files["/latest.bin"] = new
    assert download(server.url("/latest.bin"), tmp_path / "latest.bin").read_bytes() == new


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    server.files["/x.bin"] = PAYLOAD
    server.cut_after["/x.bin"] = 4096
    server.honour_ranges = False
    with pytest.raises(DownloadError):
        download(server.url("/x.bin"), tmp_path / "x.bin", retries=0)
    assert download(server.url("/x.bin"), tmp_path / "x.bin").read_bytes() == PAYLOAD


def test_already_complete_part_file_is_finished(server, tmp_path):
    server.files["/done.bin"] = b"0123456789"
    server.cut_after["/done.bin"] = 4
    with pytest.raises(DownloadError):
        download(server.url("/done.bin"), tmp_path / "done.bin", retries=0)
    (tmp_path / "done.bin.part").write_bytes(b"0123456789")  # e.g. the process died before renaming
    assert download(server.url("/done.bin"), tmp_path / "done.bin").read_bytes() == b"0123456789"


def test_body_cut_short_without_a_length_is_detected_and_resumed(server, tmp_path):
    """No Content-Length, no checksum: a cut connection ends the body like a complete one did. The
    download now asks for the bytes after the end; the server still has some, so it resumes."""
    server.files["/nolen.bin"] = PAYLOAD
    server.cut_after["/nolen.bin"] = 1_000_000
    server.send_length = False
    assert download(server.url("/nolen.bin"), tmp_path / "nolen.bin", backoff_s=0).read_bytes() == PAYLOAD
    # The probe (206: more to come), then the resume, whose Content-Range gives the total.
    assert server.ranges_requested("/nolen.bin") == [None, "bytes=1000000-", "bytes=1000000-"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nolen.bin"]


def test_complete_body_without_a_length_is_confirmed_by_the_server(server, tmp_path):
    server.files["/small.txt"] = b"hello\n"
    server.send_length = False
    assert download(server.url("/small.txt"), tmp_path / "small.txt").read_bytes() == b"hello\n"
    assert server.ranges_requested("/small.txt") == [None, "bytes=6-"]


def test_no_length_and_no_range_support_is_refused_not_trusted(server, tmp_path):
    server.files["/stream.bin"] = PAYLOAD
    server.cut_after["/stream.bin"] = 4096
    server.send_length = False
    server.honour_ranges = False
    with pytest.raises(DownloadError) as info:
        download(server.url("/stream.bin"), tmp_path / "stream.bin", backoff_s=0)
    assert str(info.value) == (f"stream.bin: 127.0.0.1:{server.httpd.server_address[1]} sent no length and cannot "
                               "confirm where the file ends (no Range support), so a cut transfer would look "
                               "complete; give a checksum or download it by hand")
    assert list(tmp_path.iterdir()) == []
    # With a checksum the body is verified instead, and the probe is not needed.
    server.cut_after.pop("/stream.bin", None)
    sha = Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest())
    assert download(server.url("/stream.bin"), tmp_path / "stream.bin", checksum=sha).read_bytes() == PAYLOAD


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/pub/file.zip", "file:///etc/passwd"])
def test_redirect_to_anything_but_http_is_refused(server, tmp_path, location):
    server.redirects["/file.zip"] = location
    with pytest.raises(DownloadError) as info:
        download(server.url("/file.zip"), tmp_path / "file.zip")
    message = str(info.value)
    assert "\n" not in message
    if location.startswith("ftp"):
        assert message == (f"{server.url('/file.zip')} redirects to {location}: "
                           "only http and https redirects are followed")
    assert list(tmp_path.iterdir()) == []


def test_redirect_to_http_is_followed(server, tmp_path):
    server.files["/real.bin"] = b"payload"
    server.redirects["/moved.bin"] = server.url("/real.bin")
    assert download(server.url("/moved.bin"), tmp_path / "moved.bin").read_bytes() == b"payload"


def test_checksum_mismatch_deletes_the_data_and_names_both_digests(server, tmp_path):
    server.files["/data.json"] = b'{"version": "1.1"}'
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=rf"data.json: sha256 mismatch \(expected {wrong}, got [0-9a-f]{{64}}\)"):
        download(server.url("/data.json"), tmp_path / "data.json", checksum=Checksum("sha256", wrong))
    assert list(tmp_path.iterdir()) == []


def test_md5_checksum_accepts_the_right_file(server, tmp_path):
    server.files["/a.txt"] = b"hello\n"
    md5 = hashlib.md5(b"hello\n").hexdigest()
    assert download(server.url("/a.txt"), tmp_path / "a.txt", checksum=Checksum("md5", md5)).read_bytes() == b"hello\n"


def test_existing_final_file_with_wrong_checksum_is_reported(tmp_path):
    (tmp_path / "old.json").write_bytes(b"partial from wget")
    with pytest.raises(DownloadError, match=r"old.json: md5 mismatch .*delete .*old.json and re-run"):
        download("http://127.0.0.1:9/old.json", tmp_path / "old.json", checksum=Checksum("md5", "0" * 32))


def test_offline_gives_one_line_cannot_reach_host(tmp_path):
    port = closed_port()
    with pytest.raises(DownloadError) as info:
        download(f"http://127.0.0.1:{port}/file.zip", tmp_path / "file.zip")
    message = str(info.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{port}: ")
    assert "refused" in message.lower() and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_reported_with_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 .* for http://127\.0\.0\.1:\d+/missing\.zip"):
        download(server.url("/missing.zip"), tmp_path / "missing.zip")


def test_bertprep_download_offline_prints_one_line(tmp_path):
    """The real CLI, with every connection sent to a closed local proxy port (never the internet)."""
    env = script_env()
    proxy = f"http://127.0.0.1:{closed_port()}"
    env.update(http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy, no_proxy="", NO_PROXY="")
    result = subprocess.run(
        [sys.executable, str(ROOT / "data" / "bertPrep.py"), "--action", "download", "--dataset", "squad",
         "--working_dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach rajpurkar.github.io"), result.stderr
    assert not list((tmp_path / "download").rglob("*.json"))


# ---------------------------------------------------------------- unpacking


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_extract_zip_places_top_folder_and_rejects_unsafe_or_damaged(tmp_path):
    good = tmp_path / "good.zip"
    good.write_bytes(make_zip({"Task/train.tsv": b"a\tb\n", "Task/dev.tsv": b"c\td\n"}))
    assert extract_zip(good, tmp_path / "out") == [tmp_path / "out" / "Task"]
    assert (tmp_path / "out" / "Task" / "dev.tsv").read_bytes() == b"c\td\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Task"], "no staging folder left behind"

    evil = tmp_path / "evil.zip"
    evil.write_bytes(make_zip({"../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="unsafe member path '../escape.txt'"):
        extract_zip(evil, tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists()

    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(DownloadError, match="cut.zip: not a valid zip file"):
        extract_zip(cut, tmp_path / "out3")


def test_truncated_bz2_is_reported_and_leaves_no_output(tmp_path):
    packed = bz2.compress(b"<mediawiki>\n" + os.urandom(200_000).hex().encode() + b"\n</mediawiki>\n")
    (tmp_path / "dump.xml.bz2").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DownloadError, match="dump.xml.bz2: cannot decompress"):
        decompress_bz2(tmp_path / "dump.xml.bz2", tmp_path / "dump.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.xml.bz2"]


# ---------------------------------------------------------------- downloaders on a local server


def test_wiki_downloader_verifies_against_the_sha1_list(server, tmp_path, monkeypatch):
    dump = bz2.compress(b"<mediawiki>\n</mediawiki>\n")
    server.files["/enwiki/latest/enwiki-latest-pages-articles-multistream.xml.bz2"] = dump  # parallel extraction
    server.files["/enwiki/latest/enwiki-latest-sha1sums.txt"] = (
        f"{'1' * 40}  enwiki-latest-pages-articles.xml.bz2\n"
        f"{hashlib.sha1(dump).hexdigest()}  enwiki-latest-pages-articles-multistream.xml.bz2\n"
    ).encode()
    monkeypatch.setattr(WikiDownloader, "DUMP_ROOT", server.url(""))
    archive = WikiDownloader.WikiDownloader("en", tmp_path / "wikicorpus_en").download()
    assert archive == tmp_path / "wikicorpus_en" / "wikicorpus_en.xml.bz2"
    assert archive.read_bytes() == dump

    server.files["/zhwiki/latest/zhwiki-latest-pages-articles-multistream.xml.bz2"] = dump
    server.files["/zhwiki/latest/zhwiki-latest-sha1sums.txt"] = (
        f"{'f' * 40}  zhwiki-latest-pages-articles-multistream.xml.bz2\n").encode()
    with pytest.raises(DownloadError, match="sha1 mismatch"):
        WikiDownloader.WikiDownloader("zh", tmp_path / "wikicorpus_zh").download()
    assert not (tmp_path / "wikicorpus_zh" / "wikicorpus_zh.xml.bz2").exists()


def test_glue_mrpc_download_and_format_match_the_real_glue_files(server, tmp_path, monkeypatch):
    """MSR's real files (md5-checked) through our formatter give GLUE's train/dev/test.tsv byte for byte."""
    mrpc = shared_path("glue", "MRPC")
    sources = {"msr_paraphrase_train.txt": "msr_paraphrase_train.txt", "msr_paraphrase_test.txt":
               "msr_paraphrase_test.txt", "dev_ids.tsv": "dev_ids.tsv"}
    for name, source in sources.items():
        server.files[f"/{name}"] = (mrpc / source).read_bytes()
        _, checksum = GLUEDownloader.MRPC_FILES[name]
        monkeypatch.setitem(GLUEDownloader.MRPC_FILES, name, (server.url(f"/{name}"), checksum))
    GLUEDownloader.GLUEDownloader(tmp_path / "glue").download("mrpc")
    for split in ("train", "dev", "test"):
        ours = (tmp_path / "glue" / "MRPC" / f"{split}.tsv").read_bytes()
        assert ours == (mrpc / f"{split}.tsv").read_bytes(), split


def test_glue_zip_task_is_unpacked_to_its_folder(server, tmp_path, monkeypatch):
    server.files["/RTE.zip"] = make_zip({"RTE/train.tsv": b"index\tsentence1\tsentence2\tlabel\n",
                                         "RTE/dev.tsv": b"index\n", "RTE/test.tsv": b"index\n"})
    monkeypatch.setitem(GLUEDownloader.ZIP_TASKS, "RTE", (server.url("/RTE.zip"), "RTE", None))
    GLUEDownloader.GLUEDownloader(tmp_path).download("rte")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RTE"]
    assert (tmp_path / "RTE" / "train.tsv").read_bytes().startswith(b"index\tsentence1")


def test_glue_task_names(tmp_path):
    assert GLUEDownloader.resolve_tasks("all") == list(GLUEDownloader.ALL_TASKS)
    assert GLUEDownloader.resolve_tasks("sst-2,MRPC,sts-b") == ["SST", "MRPC", "STS"]
    with pytest.raises(download_utils.InputError, match="GLUE task 'squad' unknown"):
        GLUEDownloader.resolve_tasks("squad")


def test_google_weights_zip_is_unpacked_and_hashed(server, tmp_path, monkeypatch, capsys):
    name = "uncased_L-12_H-768_A-12"
    server.files[f"/{name}.zip"] = make_zip({f"{name}/vocab.txt": b"[PAD]\n[UNK]\n", f"{name}/bert_config.json": b"{}"})
    monkeypatch.setitem(google.MODELS, name, server.url(f"/{name}.zip"))
    google.GooglePretrainedWeightDownloader(tmp_path).download(name)
    assert (tmp_path / name / "vocab.txt").read_bytes() == b"[PAD]\n[UNK]\n"
    assert not (tmp_path / f"{name}.zip").exists()
    assert f"{name}/vocab.txt sha256 {hashlib.sha256(b'[PAD]' + bytes([10]) + b'[UNK]' + bytes([10])).hexdigest()}" \
        in capsys.readouterr().out
    with pytest.raises(download_utils.InputError, match="unknown Google model"):
        google.resolve_models("bert_tiny")


def test_books_from_a_user_folder_and_clear_error_without_one(tmp_path, monkeypatch):
    gutenberg = shared_path("corpus", "gutenberg")
    books = tmp_path / "mybooks"
    books.mkdir()
    for name in ("blake-poems.txt", "shakespeare-caesar.txt"):
        shutil.copyfile(gutenberg / name, books / name)
    BooksDownloader(tmp_path / "bookscorpus", books).download()
    got = (tmp_path / "bookscorpus" / "shakespeare-caesar.txt").read_bytes()
    assert got == (books / "shakespeare-caesar.txt").read_bytes()

    monkeypatch.delenv("BOOKSCORPUS_DIR", raising=False)
    monkeypatch.setenv("BOOKSCORPUS_REPO", str(tmp_path / "no-scraper"))
    with pytest.raises(DownloadError, match="bookscorpus: no source.*--bookscorpus_dir"):
        BooksDownloader(tmp_path / "other").download()
