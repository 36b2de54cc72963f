"""Downloads against a local HTTP server: checksum match caches and shards, mismatch caches nothing."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_data import error_lines, make_cifar10, run_ssrr, shard_samples

from ssrr.data import download
from ssrr.errors import SsrrError


class _Server:
    """A static file server on 127.0.0.1 in a thread, counting the requests it answers."""

    def __init__(self, root: Path) -> None:
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                server.requests += 1
                super().do_GET()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.requests = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Server, Path, object, str]]:
    """A CIFAR-10 fixture archive served over HTTP, with the download table pointing at it."""
    site = tmp_path / "site"
    site.mkdir()
    path, expected = make_cifar10(site, name="cifar10.tgz")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    server = _Server(site)
    archive = download.Archive(f"{server.url}/cifar10.tgz", md5, "cifar-10-python.tar.gz")
    monkeypatch.setitem(download.ARCHIVES, "cifar10", archive)
    try:
        yield server, path, expected, md5
    finally:
        server.close()


def test_download_checks_caches_and_shards(tmp_path: Path, served) -> None:  # type: ignore[no-untyped-def]
    server, path, expected, _ = served
    cache, out = tmp_path / "cache", tmp_path / "out"
    result = run_ssrr("shard", "cifar10", "--cache", cache, "--out", out, "--shard-size", "11")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-python.tar.gz"]  # no .part left
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == path.read_bytes()
    manifest = json.loads((out / "cifar10" / "manifest.json").read_text())
    assert manifest["source"]["url"] == download.ARCHIVES["cifar10"].url
    assert manifest["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for split in ("train", "test"):
        assert shard_samples(out / "cifar10", split) == expected.samples(split)
    assert server.requests == 1
    again = run_ssrr("shard", "cifar10", "--cache", cache, "--out", out)  # from the cache: no new request
    assert again.exit_code == 0, again.output
    assert server.requests == 1


def test_checksum_mismatch_caches_nothing(tmp_path: Path, served, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, _, _, md5 = served
    wrong = "0" * 32
    url = download.ARCHIVES["cifar10"].url
    monkeypatch.setitem(download.ARCHIVES, "cifar10", download.Archive(url, wrong, "cifar-10-python.tar.gz"))
    cache = tmp_path / "cache"
    result = run_ssrr("shard", "cifar10", "--cache", cache, "--out", tmp_path / "out")
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert url in line and f"expected md5 {wrong}" in line and f"got {md5}" in line
    assert list(cache.iterdir()) == []
    assert not (tmp_path / "out" / "cifar10").exists()


def test_cache_from_environment_and_damaged_entry(tmp_path: Path, served, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    server, path, _, _ = served
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("SSRR_CACHE", str(cache))
    assert download.cache_dir() == cache
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz").write_bytes(b"damaged")
    got, sha256 = download.fetch("cifar10")
    assert got == cache / "cifar-10-python.tar.gz" and got.read_bytes() == path.read_bytes()
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert server.requests == 1


def test_unreachable_url(tmp_path: Path, served, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    server, _, _, md5 = served
    missing = f"{server.url}/missing.tgz"
    monkeypatch.setitem(download.ARCHIVES, "cifar10", download.Archive(missing, md5, "cifar-10-python.tar.gz"))
    with pytest.raises(SsrrError, match=f"{missing}: download failed"):
        download.fetch("cifar10", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_published_checksums_table() -> None:
    assert set(download.ARCHIVES) == {"cifar10", "cifar100", "stl10", "tiny-imagenet"}
    for archive in download.ARCHIVES.values():
        assert len(archive.md5) == 32 and archive.url.endswith(archive.filename)
