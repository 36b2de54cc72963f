"""Shard folders fetched over HTTP (a server on 127.0.0.1): verified, cached, corrupt or missing shards refused."""

from __future__ import annotations

import http.server
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_shards

from ssrr.data import formats
from ssrr.data.remote import FetchStats, cache_folder, fetch_shards, is_url, resolve_dataset_any
from ssrr.errors import SsrrError


class Site:
    """Static files from a folder, served on 127.0.0.1 by a thread; records the paths requested."""

    def __init__(self, root: Path) -> None:
        requested: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                requested.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.requested = requested
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[tuple[Site, Path]]:
    """A shard folder `tiny` (3 train shards, 1 test shard) written by the real writer, served over HTTP."""
    folder = make_shards(tmp_path / "site", name="tiny", train=60, test=20, shard_size=25)
    served = Site(tmp_path / "site")
    yield served, folder
    served.close()


def shard_files(folder: Path) -> list[str]:
    manifest = formats.load_manifest(folder)
    names = [s.file for split in manifest.splits.values() for s in split.shards]
    return sorted(names + [formats.index_path(Path(n)).name for n in names])


def test_fetch_downloads_verifies_and_returns_a_readable_copy(site, tmp_path: Path) -> None:
    served, source = site
    stats = FetchStats()
    local = fetch_shards(f"{served.base}/tiny/", tmp_path / "cache", show=False, stats=stats)
    assert local == cache_folder(f"{served.base}/tiny", tmp_path / "cache")
    assert local.name == "tiny"
    assert formats.load_manifest(local).name == "tiny"
    for name in [*shard_files(source), formats.MANIFEST]:
        assert (local / name).read_bytes() == (source / name).read_bytes(), name
    assert stats.downloaded == 1 + len(shard_files(source))  # the manifest, every shard and index
    assert not list(local.glob(".*part*"))


def test_a_second_fetch_uses_the_cache_without_any_request(site, tmp_path: Path) -> None:
    served, _ = site
    first = fetch_shards(f"{served.base}/tiny", tmp_path / "cache", show=False)
    count = len(served.requested)
    second = fetch_shards(f"{served.base}/tiny", tmp_path / "cache", show=False)
    assert second == first
    assert len(served.requested) == count


def test_refresh_asks_for_the_manifest_and_keeps_verified_files(site, tmp_path: Path) -> None:
    served, _ = site
    fetch_shards(f"{served.base}/tiny", tmp_path / "cache", show=False)
    count = len(served.requested)
    stats = FetchStats()
    fetch_shards(f"{served.base}/tiny", tmp_path / "cache", refresh=True, show=False, stats=stats)
    assert served.requested[count:] == ["/tiny/manifest.json"]
    assert stats.downloaded == 1


def test_a_damaged_cached_shard_is_fetched_again(site, tmp_path: Path) -> None:
    served, source = site
    local = fetch_shards(f"{served.base}/tiny", tmp_path / "cache", show=False)
    victim = local / "train-000001.tar"
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size, wrong bytes: only a hash notices
    fetch_shards(f"{served.base}/tiny", tmp_path / "cache", refresh=True, show=False)
    assert victim.read_bytes() == (source / victim.name).read_bytes()


def test_a_corrupted_shard_on_the_server_is_refused_naming_it(site, tmp_path: Path) -> None:
    served, source = site
    shard = source / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # one flipped byte inside a sample
    shard.write_bytes(bytes(data))
    with pytest.raises(SsrrError, match=r"train-000001\.tar") as caught:
        fetch_shards(f"{served.base}/tiny", tmp_path / "cache", show=False)
    message = str(caught.value)
    assert "\n" not in message and "does not match the manifest" in message
    local = cache_folder(f"{served.base}/tiny", tmp_path / "cache")
    assert not (local / "train-000001.tar").exists()
    assert not (local / formats.MANIFEST).exists()  # the copy is not marked complete
    assert not list(local.glob(".*part*"))


def test_a_missing_shard_is_one_clear_line(site, tmp_path: Path) -> None:
    served, source = site
    (source / "test-000000.tar").unlink()
    with pytest.raises(SsrrError, match=r"test-000000\.tar: HTTP 404") as caught:
        fetch_shards(f"{served.base}/tiny", tmp_path / "cache", show=False)
    assert "\n" not in str(caught.value)


def test_a_url_that_is_no_shard_folder_names_the_manifest(site, tmp_path: Path) -> None:
    served, _ = site
    with pytest.raises(SsrrError, match=r"nothing/manifest\.json: HTTP 404"):
        fetch_shards(f"{served.base}/nothing", tmp_path / "cache", show=False)


def test_a_manifest_cannot_write_outside_the_cache(site, tmp_path: Path) -> None:
    served, source = site
    manifest = json.loads((source / formats.MANIFEST).read_text())
    manifest["splits"]["train"]["shards"][0]["file"] = "../../escape.tar"
    (source / formats.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SsrrError, match="not a plain file name"):
        fetch_shards(f"{served.base}/tiny", tmp_path / "cache", show=False)
    assert not list(tmp_path.rglob("escape.tar"))


def test_resolve_dataset_any_takes_urls_remote_roots_folders_and_names(site, tmp_path: Path) -> None:
    served, source = site
    cache = tmp_path / "cache"
    by_url = resolve_dataset_any(f"{served.base}/tiny", "shards", cache, show=False)
    by_root = resolve_dataset_any("tiny", served.base, cache, show=False)
    assert by_url == by_root and (by_url / formats.MANIFEST).is_file()
    assert resolve_dataset_any(str(source), "shards", cache) == source
    assert resolve_dataset_any("tiny", str(source.parent), cache) == source
    assert resolve_dataset_any(f"file://{source}", "shards", cache) == source
    with pytest.raises(SsrrError, match="ssrr shard cifar100"):
        resolve_dataset_any("cifar100", str(tmp_path / "empty"), cache)


def test_is_url() -> None:
    assert is_url("https://host/shards/cifar10") and is_url("s3://bucket/x") and is_url("gs://b/x")
    assert not is_url("shards/cifar10") and not is_url("file:///data/x") and not is_url(Path("http://x"))


def test_other_schemes_go_through_fsspec(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    source = make_shards(tmp_path / "site", name="mem", train=30, test=10, shard_size=20)
    memory = fsspec.filesystem("memory")
    for path in source.iterdir():
        memory.pipe(f"/bucket/mem/{path.name}", path.read_bytes())
    try:
        local = fetch_shards("memory://bucket/mem", tmp_path / "cache", show=False)
        assert formats.load_manifest(local).name == "mem"
        for name in shard_files(source):
            assert (local / name).read_bytes() == (source / name).read_bytes()
    finally:
        memory.rm("/bucket", recursive=True)


def test_without_fsspec_another_scheme_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # `import fsspec` now fails
    with pytest.raises(SsrrError, match=r'needs the optional fsspec( and s3fs)? packages?, .*pip install "ssrr\[s3\]"'):
        fetch_shards("s3://bucket/shards/cifar10", tmp_path / "cache", show=False)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
