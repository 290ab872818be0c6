"""Fetching a published weight file the way ``torch.hub.download_url_to_file`` does, plus what it lacks.

Why not torch.hub itself: it cannot resume a partial download (a 2.1 GB ADM file over a flaky link starts over),
has no connection timeout (a firewalled host hangs forever) and cannot point at a mirror. Here, with urllib only:
a ``<file>.part`` is resumed with an HTTP ``Range`` request, the byte count is checked against the server's
``Content-Length`` (``Content-Range`` when resuming), the SHA-256 is checked against the prefix that
torchvision-style names carry (``name-<hex>.pth``), an optional ``verify`` callable checks the content, and only
then is the file renamed into place: a failed or wrong download never leaves anything at the final path.

``DIFFLID_OFFLINE=1`` forbids every request (``OfflineError``, raised before any socket is opened);
``DIFFLID_MIRROR=URL`` (or ``mirror=``) fetches the same file name from another host.
"""
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

__all__ = ['MIRROR_ENV', 'OFFLINE_ENV', 'DownloadError', 'OfflineError', 'download_file', 'file_sha256',
           'hash_prefix_of', 'is_offline', 'published_hash', 'source_url']

OFFLINE_ENV = 'DIFFLID_OFFLINE'
MIRROR_ENV = 'DIFFLID_MIRROR'
CHUNK = 1 << 20
# torchvision's convention (torch.hub's HASH_REGEX): the hex after the last '-' is a prefix of the file's SHA-256
_HASH_IN_NAME = re.compile(r'-([a-f0-9]{6,})\.[A-Za-z0-9]+$')


class DownloadError(RuntimeError):
    """A download that did not produce a verified file (network failure, size or hash mismatch, bad content)."""


class OfflineError(DownloadError):
    """The download was not attempted because ``DIFFLID_OFFLINE`` is set."""


def is_offline() -> bool:
    """True when ``DIFFLID_OFFLINE`` is set to anything but '', '0' or 'false': no request may be made."""
    return os.environ.get(OFFLINE_ENV, '').strip().lower() not in ('', '0', 'false', 'no')


def source_url(url: str, mirror: str | None = None) -> str:
    """``url``, or the same file name under ``mirror`` (argument, else ``DIFFLID_MIRROR``): hosts behind firewalls."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if not mirror:
        return url
    return mirror.rstrip('/') + '/' + Path(urlparse(url).path).name


def hash_prefix_of(file_name: str) -> str | None:
    """The SHA-256 prefix a torchvision-style name (``vgg16-397923af.pth``) publishes, or None."""
    match = _HASH_IN_NAME.search(file_name)
    return match.group(1) if match else None


def published_hash(url: str) -> str:
    """The SHA-256 prefix to require of ``url``'s file: the one in its name for download.pytorch.org files (torchvision
    loads them with ``check_hash=True``, so the convention is kept there); '' (no check) elsewhere, where a hex word in
    a name need not be a SHA-256 (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` is never checked by its
    authors)."""
    if urlparse(url).netloc != 'download.pytorch.org':
        return ''
    return hash_prefix_of(Path(urlparse(url).path).name) or ''


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (weight files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _total_size(response, start: int) -> int | None:
    """The full file size the server announces: Content-Range's total for a 206, Content-Length for a 200."""
    content_range = response.headers.get('Content-Range', '')
    match = re.match(r'bytes (\d+)-(\d+)/(\d+|\*)', content_range)
    if response.status == 206 and match:
        if int(match.group(1)) != start:
            raise DownloadError(f'the server resumed at byte {match.group(1)}, not at {start} as asked')
        return None if match.group(3) == '*' else int(match.group(3))
    length = response.headers.get('Content-Length')
    if length is None:
        return None
    return int(length) + (start if response.status == 206 else 0)


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, desc: str) -> int | None:
    """One request: append to ``part`` from its current size (Range) or rewrite it (the server ignored Range).
    Returns the announced total size (None if unknown); a cut connection just returns with ``part`` short."""
    start = part.stat().st_size if part.is_file() else 0
    headers = {'User-Agent': 'difflid', 'Range': f'bytes={start}-'} if start else {'User-Agent': 'difflid'}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing left to send: the part may already be whole; checked by the caller
            return start
        raise
    with response:
        if response.status != 206:
            start = 0  # a 200 is the whole file again
        total = _total_size(response, start)
        with open(part, 'ab' if start else 'wb') as f, tqdm(total=total, initial=start, unit='B', unit_scale=True,
                                                            unit_divisor=1024, desc=desc, disable=not progress) as bar:
            try:
                while block := response.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:  # cut mid-file: keep what arrived for a resume
                bar.write(f'{desc}: connection lost after {f.tell()} bytes ({err}); resuming')
    return total


def download_file(url: str, dest: str | Path, *, mirror: str | None = None, hash_prefix: str | None = None,
                  verify: Callable[[Path], None] | None = None, write_sidecar: bool = False, timeout: float = 15.0,
                  retries: int = 3, progress: bool = True) -> Path:
    """Download ``url`` (or its file under a mirror) to ``dest``, verified, with resume; returns ``dest``.

    Args:
        url: The published address; with a mirror only its file name is used.
        dest: Final path. Nothing is written there unless every check passed.
        mirror: Base URL of a mirror (default: ``DIFFLID_MIRROR``).
        hash_prefix: Expected start of the SHA-256 hex digest (default: the one in ``dest``'s torchvision-style name).
        verify: Called with the complete ``.part`` file; raises (any exception) if the content is wrong.
        write_sidecar: Write the computed SHA-256 to ``<dest>.sha256`` (sha256sum format), for files whose publisher
            gives no hash: a later copy can then be checked with ``sha256sum -c``.
        timeout: Seconds a connect or a read may block.
        retries: Extra requests after a connection is cut (each resumes where the file stopped).
        progress: Show a tqdm bar.
    Raises:
        OfflineError: ``DIFFLID_OFFLINE`` is set (no request made).
        DownloadError: the network failed, or the size, hash or content was wrong (the ``.part`` of a wrong file is
            deleted; that of an interrupted one is kept for the next attempt).
    """
    dest = Path(dest)
    source = source_url(url, mirror)
    if is_offline():
        raise OfflineError(f'not downloading {source}: {OFFLINE_ENV} is set')
    hash_prefix = hash_prefix if hash_prefix is not None else hash_prefix_of(dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + '.part')
    total = None
    for _ in range(retries + 1):
        try:
            total = _fetch_once(source, part, timeout, progress, dest.name) or total
        except (OSError, http.client.HTTPException, ValueError) as err:  # refused, unreachable, timed out, HTTP error
            raise DownloadError(f'cannot download {source}: {getattr(err, "reason", err)}') from err
        size = part.stat().st_size
        if total is None or size >= total:
            break
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise DownloadError(f'{source}: the server announced {total} bytes (Content-Length) but {size} arrived after '
                            f'{retries + 1} requests; the partial file {part} is kept for the next attempt'
                            if size < total else f'{source}: got {size} bytes, more than the {total} announced')
    digest = file_sha256(part)
    if hash_prefix and not digest.startswith(hash_prefix):
        part.unlink()
        raise DownloadError(f'{source}: SHA-256 {digest} does not start with {hash_prefix}, the hash its name '
                            'publishes; the file was deleted (a wrong mirror, or a corrupted transfer)')
    if verify is not None:
        try:
            verify(part)
        except Exception as err:  # any failure of the content check means "wrong file"
            part.unlink()
            raise DownloadError(f'{source}: the downloaded file is not the expected one ({err}); deleted') from err
    os.replace(part, dest)
    if write_sidecar:
        dest.with_name(dest.name + '.sha256').write_text(f'{digest}  {dest.name}\n', encoding='utf-8')
    return dest
