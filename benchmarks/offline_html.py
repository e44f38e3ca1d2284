"""Make asv's published report viewable without a network.

    asv publish
    python benchmarks/offline_html.py [HTML_DIR] [--from FOLDER]
    python -m http.server --directory .asv/html 8080     # then open http://localhost:8080

asv's index.html loads jQuery, flot, bootstrap and a few other scripts from public CDNs (with
their Subresource Integrity hashes), so the report shows an error page on a machine that cannot
reach them. This downloads each of them once, checks it against the hash the page gives, stores
it in HTML_DIR/vendor/ (default .asv/html, from asv.conf.json's html_dir) and points the page
at the stored copy. With --from FOLDER it takes the files from FOLDER instead (named as the last
part of their address; fetch them on a machine with a network), checking them the same way.
Run it again after every `asv publish`, which rewrites index.html.

The page must still be served over HTTP (as above, or `asv preview`): it reads its results as
JSON with XMLHttpRequest, which browsers refuse for file:// pages.
"""
import argparse
import base64
import hashlib
import html
import os
import re
import sys
import urllib.request

# A <script src="https://..."> or <link href="https://...">, with its integrity attribute.
TAG = re.compile(r'<(script|link)\b[^>]*?\b(?:src|href)="(https://[^"]+)"[^>]*>')
INTEGRITY = re.compile(r'\bintegrity="(sha256|sha384|sha512)-([^"]+)"')
DROPPED = re.compile(r'\s(?:integrity|crossorigin|referrerpolicy)="[^"]*"')


def _read(url, source):
    if source is not None:
        path = os.path.join(source, url.rsplit("/", 1)[-1])
        with open(path, "rb") as f:
            return f.read()
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _check(url, data, algorithm, expected):
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"{url}: its {algorithm} hash is {digest}, the page expects {expected}")


def vendor(html_dir, source=None):
    """Store every CDN file index.html loads under html_dir/vendor and rewrite the page to use
    the copies. Returns the number of files stored."""
    page_path = os.path.join(html_dir, "index.html")
    with open(page_path, encoding="utf-8") as f:
        page = f.read()
    os.makedirs(os.path.join(html_dir, "vendor"), exist_ok=True)
    stored = 0

    def localize(match):
        nonlocal stored
        tag, url = match.group(0), html.unescape(match.group(2))
        integrity = INTEGRITY.search(tag)
        if integrity is None:
            raise ValueError(f"{url}: the page gives no integrity hash to check it against")
        data = _read(url, source)
        _check(url, data, *integrity.groups())
        name = hashlib.sha256(url.encode()).hexdigest()[:8] + "-" + url.rsplit("/", 1)[-1]
        with open(os.path.join(html_dir, "vendor", name), "wb") as f:
            f.write(data)
        stored += 1
        return DROPPED.sub("", tag).replace(match.group(2), f"vendor/{name}")

    page = TAG.sub(localize, page)
    with open(page_path, "w", encoding="utf-8") as f:
        f.write(page)
    return stored


def _html_dir():
    """asv.conf.json's html_dir (asv's own reader: the file has comments), else .asv/html."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        from asv.util import load_json
        conf = load_json(os.path.join(root, "asv.conf.json"), js_comments=True)
        return os.path.join(root, conf.get("html_dir", "html"))
    except Exception:  # noqa: BLE001 (no asv, no file: the documented default)
        return os.path.join(root, ".asv", "html")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_dir", nargs="?", help="asv's published report (default: "
                        "asv.conf.json's html_dir)")
    parser.add_argument("--from", dest="source", metavar="FOLDER",
                        help="take the files from FOLDER instead of downloading them")
    args = parser.parse_args(argv)
    html_dir = args.html_dir or _html_dir()
    if not os.path.isfile(os.path.join(html_dir, "index.html")):
        print(f"offline_html: {html_dir} has no index.html: run `asv publish` first",
              file=sys.stderr)
        return 2
    try:
        stored = vendor(html_dir, args.source)
    except (OSError, ValueError) as exc:
        print(f"offline_html: {exc}", file=sys.stderr)
        return 1
    print(f"{stored} files stored in {os.path.join(html_dir, 'vendor')}; serve the report with "
          f"python -m http.server --directory {html_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
