"""The pure policy in memory: every status, HEAD, conditionals, ranges, traversal, the cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from trioserver.config import HttpSettings
from trioserver.http import BUNDLED_SITE, FileRange, Response, StaticSite
from trioserver.http.conditional import http_date
from trioserver.http.status import STATUSES

from .conftest import BIG_SIZE, INDEX, SECRET, FakeClock, parse_responses, request


def site_for(root: Path, clock: FakeClock | None = None, **options: object) -> StaticSite:
    return StaticSite(root, clock=clock or FakeClock(), **options)  # type: ignore[arg-type]


def headers_of(response: Response) -> dict[str, str]:
    """The head parsed by a real parser (the body is checked separately)."""
    lines = response.head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 ") and response.head.endswith(b"\r\n\r\n")
    assert lines[0] == f"HTTP/1.1 {response.status} {STATUSES[response.status].reason}"
    out = {}
    for line in lines[1:-2]:
        name, _, value = line.partition(": ")
        assert name.lower() not in out, f"duplicate header {name}"
        out[name.lower()] = value
    return out


def body_bytes(response: Response) -> bytes:
    body = response.body
    if isinstance(body, FileRange):
        with open(body.path, "rb") as f:
            f.seek(body.offset)
            return f.read(body.length)
    return body


# -- 200 and HEAD -----------------------------------------------------------------------


def test_get_serves_the_file_with_all_headers(docroot: Path) -> None:
    clock = FakeClock()
    response = site_for(docroot, clock).respond(request(b"/a.txt"))
    headers = headers_of(response)
    assert response.status == 200 and not response.close
    assert body_bytes(response) == b"0123456789abcdefghij"
    mtime = int((docroot / "a.txt").stat().st_mtime)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == "20"
    assert headers["date"] == http_date(clock.now).decode()
    assert headers["last-modified"] == http_date(mtime).decode()
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
    assert headers["accept-ranges"] == "bytes"
    assert headers["server"] == "trioserver"
    assert "connection" not in headers  # HTTP/1.1 keeps alive by default


def test_head_has_the_same_headers_and_no_body(docroot: Path) -> None:
    site = site_for(docroot)
    get = site.respond(request(b"/a.txt"))
    head = site.respond(request(b"/a.txt", method=b"HEAD"))
    assert head.status == 200 and head.body == b""
    assert head.head == get.head
    big = site.respond(request(b"/big.bin", method=b"HEAD"))
    assert big.body == b"" and headers_of(big)["content-length"] == str(BIG_SIZE)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", INDEX),
        (b"/index.html", INDEX),
        (b"/sub/", b"sub index"),
        (b"/sub/page.html", b"sub page"),
    ],
)
def test_index_file_for_directories(docroot: Path, target: bytes, expected: bytes) -> None:
    response = site_for(docroot).respond(request(target))
    assert response.status == 200 and body_bytes(response) == expected
    assert headers_of(response)["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        (b"/style.css", "text/css; charset=utf-8"),
        (b"/app.js", "text/javascript; charset=utf-8"),
        (b"/noext", "application/octet-stream"),
        (b"/big.bin", "application/octet-stream"),
    ],
)
def test_content_type_by_extension(docroot: Path, name: bytes, content_type: str) -> None:
    assert headers_of(site_for(docroot).respond(request(name)))["content-type"] == content_type


def test_empty_file(docroot: Path) -> None:
    response = site_for(docroot).respond(request(b"/empty.txt"))
    assert response.status == 200 and response.body == b""
    assert headers_of(response)["content-length"] == "0"


def test_percent_encoded_names_and_absolute_form(docroot: Path) -> None:
    site = site_for(docroot)
    assert body_bytes(site.respond(request(b"/a%20b.txt"))) == b"space"
    # decoded exactly once: %252e names the file literally called "%2e.txt"
    assert body_bytes(site.respond(request(b"/%252e.txt"))) == b"literal percent name"
    assert body_bytes(site.respond(request(b"http://example.com/a.txt?x=1"))) == (
        b"0123456789abcdefghij"
    )
    assert body_bytes(site.respond(request(b"/a.txt?q=../../secret.txt#frag"))) == (
        b"0123456789abcdefghij"
    )


def test_large_files_are_sent_from_disk(docroot: Path) -> None:
    response = site_for(docroot).respond(request(b"/big.bin"))
    assert isinstance(response.body, FileRange)
    assert (response.body.offset, response.body.length) == (0, BIG_SIZE)
    assert response.body_length == BIG_SIZE
    assert body_bytes(response) == (docroot / "big.bin").read_bytes()


# -- errors -----------------------------------------------------------------------------


def test_404_and_no_directory_listing(docroot: Path) -> None:
    site = site_for(docroot)
    for target in (b"/missing.html", b"/nolist/", b"/sub/missing/"):
        response = site.respond(request(target))
        assert response.status == 404 and not response.close
        assert b"404 Not Found" in body_bytes(response)
        assert b"x.txt" not in body_bytes(response)


def test_directory_without_slash_redirects(docroot: Path) -> None:
    site = site_for(docroot)
    response = site.respond(request(b"/sub?x=1"))
    assert response.status == 301
    assert headers_of(response)["location"] == "/sub/?x=1"
    # never a protocol-relative Location, whatever the target looked like
    (docroot / "evil.com").mkdir()
    assert headers_of(site.respond(request(b"//evil.com")))["location"] == "/evil.com/"


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"])
def test_other_methods_are_405_with_allow(docroot: Path, method: bytes) -> None:
    response = site_for(docroot).respond(request(b"/a.txt", method=method))
    assert response.status == 405 and not response.close
    assert headers_of(response)["allow"] == "GET, HEAD"


@pytest.mark.parametrize("target", [b"*", b"example.com:443", b"a.txt", b"ftp://x/a.txt"])
def test_targets_that_are_not_paths_are_400(docroot: Path, target: bytes) -> None:
    response = site_for(docroot).respond(request(target))
    assert response.status == 400 and response.close


@pytest.mark.parametrize("status", sorted(code for code in STATUSES if code >= 400))
def test_every_error_status_has_a_short_html_page(docroot: Path, status: int) -> None:
    site = site_for(docroot)
    response = site.error(status)
    headers = headers_of(response)
    assert response.close  # without a request, the connection always closes
    assert headers["connection"] == "close"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(body_bytes(response)) < 400
    assert f"{status} {STATUSES[status].reason}".encode() in body_bytes(response)
    head = site.error(status, request(method=b"HEAD"))
    assert head.body == b"" and headers_of(head)["content-length"] == headers["content-length"]


@pytest.mark.parametrize(
    ("status", "closes"),
    [
        (404, False),
        (405, False),
        (408, True),
        (413, True),
        (414, True),
        (431, True),
        (500, True),
        (503, True),
        (400, True),
    ],
)
def test_which_errors_close_a_keep_alive_connection(
    docroot: Path, status: int, closes: bool
) -> None:
    response = site_for(docroot).error(status, request())
    assert response.close is closes
    assert ("connection" in headers_of(response)) is closes


@pytest.mark.parametrize(
    ("version", "keep_alive", "line"),
    [
        (b"1.1", True, None),
        (b"1.1", False, "close"),
        (b"1.0", True, "keep-alive"),
        (b"1.0", False, "close"),
    ],
)
def test_connection_header(
    docroot: Path, version: bytes, keep_alive: bool, line: str | None
) -> None:
    response = site_for(docroot).respond(request(version=version, keep_alive=keep_alive))
    assert headers_of(response).get("connection") == line
    assert response.close is not keep_alive


def test_responses_parse_with_a_real_parser(docroot: Path) -> None:
    site = site_for(docroot)
    wire = b""
    for target in (b"/", b"/a.txt", b"/missing", b"/sub"):
        response = site.respond(request(target))
        wire += response.head + body_bytes(response)
    parsed = parse_responses(wire)
    assert [p.status for p in parsed] == [200, 200, 404, 301]
    assert parsed[0].body == INDEX


def test_bundled_site_is_the_default(tmp_path: Path) -> None:
    site = StaticSite.from_settings(HttpSettings())
    assert site.root == os.fsencode(os.path.realpath(BUNDLED_SITE))
    response = site.respond(request(b"/"))
    assert response.status == 200 and b"trioserver is running" in body_bytes(response)


def test_settings_are_applied(docroot: Path) -> None:
    settings = HttpSettings(document_root=docroot, index="page.html", cache_max_file_size=0)
    site = StaticSite.from_settings(settings)
    assert body_bytes(site.respond(request(b"/sub/"))) == b"sub page"
    assert isinstance(site.respond(request(b"/a.txt")).body, FileRange)


def test_bad_roots_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        StaticSite(tmp_path / "nope")
    with pytest.raises(ValueError, match="index"):
        StaticSite(tmp_path, index="../x")


# -- conditional requests ------------------------------------------------------------


def test_if_none_match(docroot: Path) -> None:
    site = site_for(docroot)
    etag = headers_of(site.respond(request(b"/a.txt")))["etag"].encode()
    for value in (etag, b'"x", ' + etag, b"W/" + etag, b"*"):
        response = site.respond(request(b"/a.txt", headers={b"if-none-match": value}))
        assert response.status == 304 and response.body == b""
        headers = headers_of(response)
        assert headers["etag"] == etag.decode() and "content-length" not in headers
    other = site.respond(request(b"/a.txt", headers={b"if-none-match": b'"other"'}))
    assert other.status == 200
    head = site.respond(request(b"/a.txt", method=b"HEAD", headers={b"if-none-match": etag}))
    assert head.status == 304


def test_if_modified_since(docroot: Path) -> None:
    mtime = int((docroot / "a.txt").stat().st_mtime)
    clock = FakeClock(mtime + 7200)
    site = site_for(docroot, clock)
    last_modified = headers_of(site.respond(request(b"/a.txt")))["last-modified"].encode()
    cases = [
        (last_modified, 304),
        (http_date(mtime + 3600), 304),
        (http_date(clock.now), 304),
        (http_date(mtime - 3600), 200),
        (http_date(clock.now + 1), 200),  # later than the server's clock: ignored
        (http_date(clock.now + 86400 * 365), 200),
        (b"not a date", 200),
        (b"Sun, 06 Nov 99999 08:49:37 GMT", 200),
    ]
    for value, status in cases:
        response = site.respond(request(b"/a.txt", headers={b"if-modified-since": value}))
        assert response.status == status, value


def test_a_file_modified_in_the_servers_future_ignores_its_own_last_modified(
    docroot: Path,
) -> None:
    mtime = int((docroot / "a.txt").stat().st_mtime)
    site = site_for(docroot, FakeClock(mtime - 60))  # the file's mtime is ahead of the clock
    last_modified = headers_of(site.respond(request(b"/a.txt")))["last-modified"].encode()
    response = site.respond(request(b"/a.txt", headers={b"if-modified-since": last_modified}))
    assert response.status == 200


def test_if_none_match_wins_over_if_modified_since(docroot: Path) -> None:
    site = site_for(docroot)
    last_modified = headers_of(site.respond(request(b"/a.txt")))["last-modified"].encode()
    response = site.respond(
        request(b"/a.txt", headers={b"if-none-match": b'"x"', b"if-modified-since": last_modified})
    )
    assert response.status == 200


# -- ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "content_range", "body"),
    [
        (b"bytes=0-4", "bytes 0-4/20", b"01234"),
        (b"bytes=10-", "bytes 10-19/20", b"abcdefghij"),
        (b"bytes=-3", "bytes 17-19/20", b"hij"),
        (b"bytes=15-100", "bytes 15-19/20", b"fghij"),
        (b"bytes=-100", "bytes 0-19/20", b"0123456789abcdefghij"),
        (b"bytes=19-19", "bytes 19-19/20", b"j"),
    ],
)
def test_single_range_is_206(docroot: Path, value: bytes, content_range: str, body: bytes) -> None:
    response = site_for(docroot).respond(request(b"/a.txt", headers={b"range": value}))
    headers = headers_of(response)
    assert response.status == 206
    assert headers["content-range"] == content_range
    assert headers["content-length"] == str(len(body))
    assert body_bytes(response) == body


@pytest.mark.parametrize("value", [b"bytes=20-", b"bytes=100-200", b"bytes=-0"])
def test_unsatisfiable_range_is_416(docroot: Path, value: bytes) -> None:
    response = site_for(docroot).respond(request(b"/a.txt", headers={b"range": value}))
    assert response.status == 416 and not response.close
    assert headers_of(response)["content-range"] == "bytes */20"


@pytest.mark.parametrize(
    "value", [b"bytes=0-1,5-6", b"items=0-1", b"bytes=5-1", b"bytes=x-", b"bytes"]
)
def test_ranges_we_do_not_serve_give_the_whole_file(docroot: Path, value: bytes) -> None:
    response = site_for(docroot).respond(request(b"/a.txt", headers={b"range": value}))
    assert response.status == 200 and body_bytes(response) == b"0123456789abcdefghij"


def test_range_on_a_file_sent_from_disk(docroot: Path) -> None:
    response = site_for(docroot).respond(
        request(b"/big.bin", headers={b"range": b"bytes=1000-1999"})
    )
    assert response.status == 206
    assert isinstance(response.body, FileRange)
    assert (response.body.offset, response.body.length) == (1000, 1000)
    assert body_bytes(response) == (docroot / "big.bin").read_bytes()[1000:2000]


def test_if_range(docroot: Path) -> None:
    site = site_for(docroot)
    headers = headers_of(site.respond(request(b"/a.txt")))
    for validator, status in (
        (headers["etag"], 206),
        (headers["last-modified"], 206),
        ('"stale"', 200),
    ):
        response = site.respond(
            request(b"/a.txt", headers={b"range": b"bytes=0-1", b"if-range": validator.encode()})
        )
        assert response.status == status


def test_head_ignores_range(docroot: Path) -> None:
    response = site_for(docroot).respond(
        request(b"/a.txt", method=b"HEAD", headers={b"range": b"bytes=0-1"})
    )
    assert response.status == 200 and response.body == b""


# -- traversal: never a byte from outside the root -----------------------------------

TRAVERSALS = [
    b"/../secret.txt",
    b"/../../../../../../etc/passwd",
    b"/sub/../../secret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/.%2e/secret.txt",
    b"/%2e./secret.txt",
    b"/sub/%2e%2e/%2e%2e/secret.txt",
    b"/..%2fsecret.txt",
    b"/..%2Fsecret.txt",
    b"/%2e%2e%2fsecret.txt",
    b"/sub%2f..%2f..%2fsecret.txt",
    b"/..%5csecret.txt",
    b"/..\\secret.txt",
    b"/sub\\..\\..\\secret.txt",
    b"/a.txt%00.html",
    b"/%00",
    b"/./a.txt",
    b"/sub/./page.html",
    b"/%2e/a.txt",
    b"/..",
    b"/sub/..",
    b"/%252e%252e/secret.txt",
    b"http://host/../secret.txt",
    b"http://host/%2e%2e/secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_shapes_are_404(docroot: Path, target: bytes) -> None:
    site = site_for(docroot)
    for method in (b"GET", b"HEAD"):
        response = site.respond(request(target, method=method))
        assert response.status in (403, 404), target
        assert SECRET not in response.head + body_bytes(response)


@pytest.mark.parametrize("target", [b"//etc/passwd", b"///secret.txt", b"/" + b"/" * 50 + b"a.txt"])
def test_absolute_looking_paths_stay_under_the_root(docroot: Path, target: bytes) -> None:
    response = site_for(docroot).respond(request(target))
    if target.endswith(b"a.txt"):
        assert body_bytes(response) == b"0123456789abcdefghij"
    else:
        assert response.status == 404


def test_symlinks_pointing_outside_the_root_are_404(docroot: Path, tmp_path: Path) -> None:
    (docroot / "link.txt").symlink_to(tmp_path / "secret.txt")
    (docroot / "linkdir").symlink_to(tmp_path / "outside")
    (docroot / "abs.txt").symlink_to("/etc/hostname")
    (docroot / "rel.txt").symlink_to("../secret.txt")
    (docroot / "loop").symlink_to(docroot / "loop")
    site = site_for(docroot)
    for target in (
        b"/link.txt",
        b"/linkdir/",
        b"/linkdir/index.html",
        b"/abs.txt",
        b"/rel.txt",
        b"/loop",
        b"/loop/x",
    ):
        response = site.respond(request(target))
        assert response.status == 404, target
        assert SECRET not in body_bytes(response)


def test_symlinks_inside_the_root_are_served(docroot: Path) -> None:
    (docroot / "alias.txt").symlink_to("a.txt")
    (docroot / "subalias").symlink_to(docroot / "sub")
    site = site_for(docroot)
    assert body_bytes(site.respond(request(b"/alias.txt"))) == b"0123456789abcdefghij"
    assert body_bytes(site.respond(request(b"/subalias/page.html"))) == b"sub page"


def test_root_itself_may_be_a_symlink(docroot: Path, tmp_path: Path) -> None:
    (tmp_path / "root-link").symlink_to(docroot)
    site = site_for(tmp_path / "root-link")
    assert body_bytes(site.respond(request(b"/a.txt"))) == b"0123456789abcdefghij"
    assert site.respond(request(b"/../secret.txt")).status == 404


def test_special_files_are_not_served(docroot: Path) -> None:
    os.mkfifo(docroot / "fifo")
    assert site_for(docroot).respond(request(b"/fifo")).status == 404


def test_unreadable_file_is_403() -> None:
    # Root reads every file, so as root the request is made as nobody (uid 65534), with
    # the site in a directory nobody can enter (pytest's own is root's alone).
    docroot = Path(tempfile.mkdtemp(prefix="trioserver-403-"))
    try:
        docroot.chmod(0o755)
        (docroot / "private.txt").write_bytes(b"private")
        (docroot / "private.txt").chmod(0)
        site = site_for(docroot)
        as_root = os.geteuid() == 0
        if as_root:
            os.seteuid(65534)
        try:
            status = site.respond(request(b"/private.txt")).status
        finally:
            if as_root:
                os.seteuid(0)
        assert status == 403
    finally:
        shutil.rmtree(docroot)


# -- the hot-file cache ------------------------------------------------------------


def test_cache_trusts_a_path_for_the_check_interval(docroot: Path) -> None:
    clock = FakeClock()
    site = site_for(docroot, clock, cache_check_interval=1.0)
    assert body_bytes(site.respond(request(b"/a.txt"))) == b"0123456789abcdefghij"
    (docroot / "a.txt").write_bytes(b"changed, and longer than before")
    clock.now += 0.5
    assert body_bytes(site.respond(request(b"/a.txt"))) == b"0123456789abcdefghij"
    clock.now += 0.5
    response = site.respond(request(b"/a.txt"))
    assert body_bytes(response) == b"changed, and longer than before"
    assert headers_of(response)["content-length"] == "31"
    stats = site.statistics()
    assert (stats.misses, stats.hits, stats.rechecks) == (1, 1, 1)


@pytest.mark.parametrize("change", ["same size, new mtime", "replaced (new inode)", "deleted"])
def test_cache_notices_changes(docroot: Path, change: str) -> None:
    clock = FakeClock()
    site = site_for(docroot, clock, cache_check_interval=0.0)
    first = site.respond(request(b"/a.txt"))
    path = docroot / "a.txt"
    if change == "same size, new mtime":
        path.write_bytes(b"ABCDEFGHIJ0123456789")
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    elif change == "replaced (new inode)":
        (docroot / "new.txt").write_bytes(b"ABCDEFGHIJ0123456789")
        os.replace(docroot / "new.txt", path)
    else:
        path.unlink()
    second = site.respond(request(b"/a.txt"))
    if change == "deleted":
        assert second.status == 404
    else:
        assert body_bytes(second) == b"ABCDEFGHIJ0123456789"
        assert headers_of(second)["etag"] != headers_of(first)["etag"]


def test_open_range_refuses_a_changed_file(docroot: Path) -> None:
    site = site_for(docroot)
    response = site.respond(request(b"/big.bin"))
    assert isinstance(response.body, FileRange)
    fd = site.open_range(response.body)
    assert fd is not None
    os.close(fd)
    with open(docroot / "big.bin", "ab") as f:
        f.write(b"more")
    assert site.open_range(response.body) is None
    fresh = site.respond(request(b"/big.bin"), recheck=True)
    assert isinstance(fresh.body, FileRange) and fresh.body.length == BIG_SIZE + 4


def test_cache_is_bounded(docroot: Path) -> None:
    for i in range(50):
        (docroot / f"f{i}.txt").write_bytes(b"x" * 1000)
    site = site_for(docroot, cache_max_entries=10, cache_max_bytes=5000)
    for i in range(50):
        assert site.respond(request(f"/f{i}.txt".encode())).status == 200
    stats = site.statistics()
    assert stats.entries <= 10 and stats.body_bytes <= 5000
    for i in range(50):  # every file still served right, cached or not
        assert body_bytes(site.respond(request(f"/f{i}.txt".encode()))) == b"x" * 1000


def test_missing_paths_are_not_cached(docroot: Path) -> None:
    site = site_for(docroot)
    for i in range(100):
        site.respond(request(f"/missing{i}".encode()))
    assert site.statistics().entries == 0


# -- the per-second table of whole responses ----------------------------------------


def test_a_hot_response_is_reused_within_its_date_second(docroot: Path) -> None:
    clock = FakeClock(1_700_000_000.25)
    site = site_for(docroot, clock, cache_check_interval=1.0)
    first = site.respond(request(b"/a.txt"))
    clock.now += 0.5
    again = site.respond(request(b"/a.txt"))
    assert again is first  # the same immutable object: no work done
    # Not confused with a different request for the same file.
    head = site.respond(request(b"/a.txt", method=b"HEAD"))
    closing = site.respond(request(b"/a.txt", keep_alive=False))
    old = site.respond(request(b"/a.txt", version=b"1.0", keep_alive=False))
    ranged = site.respond(request(b"/a.txt", headers={b"range": b"bytes=0-1"}))
    assert head.body == b"" and closing.close and headers_of(closing)["connection"] == "close"
    assert old.close and ranged.status == 206 and body_bytes(ranged) == b"01"
    etag = headers_of(first)["etag"].encode()
    assert site.respond(request(b"/a.txt", headers={b"if-none-match": etag})).status == 304
    assert site.respond(request(b"/a.txt")) is first
    # The next second: a new Date, so a new response.
    clock.now += 0.5
    later = site.respond(request(b"/a.txt"))
    assert later is not first and later.head != first.head
    assert headers_of(later)["date"] == http_date(clock.now).decode()
    assert site.statistics().hits >= 2


def test_a_reused_response_still_honours_the_check_interval(docroot: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    site = site_for(docroot, clock, cache_check_interval=0.0)  # check every request
    site.respond(request(b"/a.txt"))
    (docroot / "a.txt").write_bytes(b"changed, and longer than before")
    assert body_bytes(site.respond(request(b"/a.txt"))) == b"changed, and longer than before"


def test_the_response_table_is_bounded_against_odd_targets(docroot: Path) -> None:
    site = site_for(docroot, cache_max_entries=10)
    for i in range(100):
        response = site.respond(request(f"/a.txt?{i}".encode()))
        assert body_bytes(response) == b"0123456789abcdefghij"
    assert len(site._responses) <= 10
