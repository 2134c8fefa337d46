"""Staging: copies between the adaptors of a federation, in the background.

``Stager(fs).submit([{"from": "skerry://hpc/a/b", "to": "skerry://s3/x/b"}])`` validates
the whole list, then queues one copy per item on a bounded thread pool and returns ids;
``status(id)`` gives ``{id, state, bytes, total, error, verified}``.

Rules:
- validation comes first and covers every item (locations, adaptors, read-only
  targets, ``..`` segments, webhook URLs, the item count): one bad item refuses the
  whole list (``CopyRequestError``) and nothing is started;
- data streams in ``BLOCK`` blocks from the source to the target: never a whole file in
  memory, never a local temporary copy;
- S3 targets get a direct multipart upload (parts of ``PART`` bytes), aborted on any
  failure; other targets get an atomic write (``atomic``: a temporary name in the
  target folder, renamed into place when complete and removed on failure): a failed
  copy leaves nothing visible;
- a folder as source copies every file below it, keeping relative paths, up to
  ``FILES_AT_ONCE`` files at a time; its first failed file (after retries) fails the
  copy, and the files already copied stay (each one complete);
- a file is never written onto an existing folder (a rename would move it inside);
- verification: the size always; the checksum where the target keeps one cheaply.
  The source's MD5 is computed while streaming; for S3 targets the expected ETag
  (MD5, or for multipart uploads the MD5 of the part MD5s with ``-N``, same ``PART``
  size) is compared with the stored object's ETag. ``verified`` says which was checked:
  ``"size+etag"`` or ``"size"``;
- transient errors (connection reset or lost, timeouts) are retried per file with
  exponential backoff; permanent ones (authentication, not found, permission, failed
  verification) never are;
- error messages are one sentence each: no traceback text, no secret (``redact``);
- the states of the last ``KEEP_COPIES`` copies are kept (in memory: a restarted
  server has none); older finished ones are forgotten;
- ``shutdown`` drops queued copies; running ones fail at their next block and clean up;
  a copy that fails in any way once ``shutdown`` was called says the server is stopping
  (what else stops in the process then, its executors and event loops, broke it);
- when a copy ends (done or failed), ``on_finished(copy)`` is called once, which
  sends its webhook and updates the find index.
"""

import errno
import hashlib
import logging
import posixpath
import queue
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from urllib.parse import unquote

from skerry.errors import BadRequest, StorageFailed

from . import atomic
from .webhooks import check_url

log = logging.getLogger(__name__)

BLOCK = 8 * 1024 * 1024
PART = 8 * 1024 * 1024  # S3 multipart part size: the expected multipart ETag depends on it
MAX_ITEMS = 10_000
KEEP_COPIES = 100_000  # states kept for GET copy/<id>; beyond it the oldest finished are forgotten
FILES_AT_ONCE = 8  # files of one folder copy in flight at once
PARTS_AT_ONCE = 4  # S3 parts of one file in flight at once
STATES = ("queued", "running", "done", "failed")
STOPPING = "the server is stopping; the copy was interrupted"  # a copy's error once ``shutdown`` was called


class CopyRequestError(BadRequest):
    """A copy request that cannot start (400): ``code`` says which check refused it."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class VerificationError(StorageFailed):
    """The copy's size or checksum differs from the source's: the target stored something else (502)."""

    code = "verification_failed"


# ---- validation ------------------------------------------------------------


def parse_location(fs, text, role: str, index: int) -> tuple[str, str]:
    """(adaptor, inner path) of ``skerry://adaptor/path`` or ``adaptor/path``."""
    where = f"item {index}: {role!r}"
    if not isinstance(text, str) or not text:
        raise CopyRequestError("bad_location", f"{where} must be a non-empty string")
    path = text[len("skerry://"):] if text.startswith("skerry://") else text
    if "://" in path:
        raise CopyRequestError("bad_location", f"{where} {text!r}: only skerry:// locations can be copied")
    if path.startswith("/"):
        raise CopyRequestError("bad_path",
                               f"{where} {text!r}: absolute paths are not allowed; start with the adaptor name")
    parts = path.rstrip("/").split("/")
    for part in parts:
        if unquote(part) in ("", ".", "..") or "\\" in part or "\0" in part:
            raise CopyRequestError("bad_path", f"{where} {text!r}: empty, '.' and '..' segments are not allowed")
    adaptor = parts[0]
    if adaptor not in fs.adaptors:
        raise CopyRequestError("unknown_adaptor",
                               f"{where} {text!r}: no adaptor named {adaptor!r} "
                               f"(adaptors: {', '.join(sorted(fs.adaptors))})")
    return adaptor, "/".join(parts[1:])


def validate(fs, items) -> list[dict]:
    """The normalised copy list, or ``CopyRequestError`` for the first bad item."""
    if not isinstance(items, list):
        raise CopyRequestError("bad_request", "the body must be a JSON list of {from, to, webhook?} objects")
    if not items:
        raise CopyRequestError("bad_request", "the list of copies is empty")
    if len(items) > MAX_ITEMS:
        raise CopyRequestError("too_many", f"{len(items)} copies requested; at most {MAX_ITEMS} per request")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CopyRequestError("bad_request", f"item {i} must be an object with 'from' and 'to'")
        unknown = set(item) - {"from", "to", "webhook"}
        if unknown:
            raise CopyRequestError("bad_request", f"item {i}: unknown field(s) {', '.join(sorted(unknown))}")
        src = parse_location(fs, item.get("from"), "from", i)
        dst = parse_location(fs, item.get("to"), "to", i)
        if not dst[1]:
            raise CopyRequestError("bad_path", f"item {i}: 'to' must name a path inside adaptor {dst[0]!r}")
        if dst[0] in fs.read_only:
            raise CopyRequestError("read_only", f"item {i}: adaptor {dst[0]!r} is read-only")
        s, d = "/".join(src).rstrip("/"), "/".join(dst)
        if d == s or d.startswith(s + "/"):
            raise CopyRequestError("bad_path", f"item {i}: cannot copy {s!r} onto or into itself")
        webhook = item.get("webhook")
        if webhook is not None:
            problem = check_url(webhook)
            if problem:
                raise CopyRequestError("bad_webhook", f"item {i}: {problem}")
        out.append({"from": src, "to": dst, "webhook": webhook})
    return out


# ---- errors ----------------------------------------------------------------

_TRANSIENT_ERRNO = {errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                    errno.ECONNREFUSED, errno.EBUSY, errno.EAGAIN, errno.ENETUNREACH}


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the network, not the request, failed."""
    if isinstance(exc, (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError,
                        NotADirectoryError, VerificationError, ValueError)):
        return False
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ConnectionError) and cause is not None and not is_transient(cause):
        return False  # e.g. "adaptor cannot be reached" because its login was refused
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    try:
        import asyncssh

        if isinstance(exc, asyncssh.PermissionDenied):
            return False
        if isinstance(exc, (asyncssh.ConnectionLost, asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)):
            return True
    except ImportError:  # sshfs not installed
        pass
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "ConnectionClosedError", "ServerDisconnectedError", "ClientOSError"):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO


def describe(exc: BaseException) -> str:
    """One sentence for an error, without traceback text."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, PermissionError):
        return f"access denied by the storage (check the adaptor's credentials and permissions): {text}"
    if isinstance(exc, FileNotFoundError):
        return f"not found: {text}"
    if isinstance(exc, VerificationError):
        return f"verification failed: {text}"
    return f"{type(exc).__name__}: {text}"


# ---- writers ---------------------------------------------------------------


def _object_store(fs, name: str, dirfs):
    """The backend under adaptor ``name`` if it is an object store (the federation says), or None.
    Object stores are written with the S3 API: ``s3`` is the one object-store type there is."""
    return dirfs.fs if fs.is_object_store(name) else None


class S3Upload:
    """A direct upload to S3: one PUT for small files, multipart otherwise (aborted on failure).

    Up to ``PARTS_AT_ONCE`` parts are in flight at once; ``write`` waits when that many
    are, so memory stays bounded (about ``PARTS_AT_ONCE + 1`` parts).
    """

    def __init__(self, s3, full_path: str):
        self.s3 = s3
        self.bucket, self.key, _ = s3.split_path(full_path)
        self.buffer = bytearray()
        self.sent = []  # futures of (part number, ETag, MD5 digest), in part order
        self.upload_id = None
        self.pool = None

    def write(self, data: bytes):
        self.buffer += data
        while len(self.buffer) >= PART:
            self._send(bytes(self.buffer[:PART]))
            del self.buffer[:PART]

    def _send(self, chunk: bytes):
        if self.upload_id is None:
            self.upload_id = self.s3.call_s3("create_multipart_upload", Bucket=self.bucket, Key=self.key)["UploadId"]
            self.pool = ThreadPoolExecutor(PARTS_AT_ONCE, thread_name_prefix="skerry-s3-part")
        pending = [f for f in self.sent if not f.done()]
        if len(pending) >= PARTS_AT_ONCE:
            wait(pending, return_when=FIRST_COMPLETED)
        for f in self.sent:
            if f.done():
                f.result()  # a failed part fails the upload now, not at the end
        self.sent.append(self.pool.submit(self._upload_part, len(self.sent) + 1, chunk))

    def _upload_part(self, number, chunk):
        r = self.s3.call_s3("upload_part", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                            PartNumber=number, Body=chunk)
        return number, r["ETag"], hashlib.md5(chunk).digest()

    def commit(self) -> str:
        """Finish the upload; returns the ETag S3 must now report."""
        if self.upload_id is None:
            body = bytes(self.buffer)
            self.s3.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body)
            return hashlib.md5(body).hexdigest()
        if self.buffer:
            self._send(bytes(self.buffer))
            self.buffer.clear()
        parts = [f.result() for f in self.sent]
        expected = hashlib.md5(b"".join(digest for _, _, digest in parts)).hexdigest() + f"-{len(parts)}"
        try:
            self.s3.call_s3("complete_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in parts]})
        except Exception:
            # assembling a large object can outlast the client's read timeout: the retried
            # request then finds the upload gone although the first one completed it
            if self._stored_etag() != expected:
                raise
            log.info("multipart upload of %s/%s completed although the request failed", self.bucket, self.key)
        self.upload_id = None
        self.pool.shutdown()
        return expected

    def _stored_etag(self):
        try:
            return self.s3.call_s3("head_object", Bucket=self.bucket, Key=self.key).get("ETag", "").strip('"')
        except Exception:  # no object (or no answer): it did not complete
            return None

    def abort(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.upload_id is not None:
            try:
                self.s3.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except Exception as e:  # the upload failed already; say so, do not mask the first error
                log.warning("could not abort multipart upload of %s/%s: %s", self.bucket, self.key, describe(e))
            self.upload_id = None


def _check_source(fin, md5):
    """An S3 source whose ETag is a plain MD5 must match the MD5 of what was read."""
    etag = str((getattr(fin, "details", None) or {}).get("ETag", "")).strip('"')
    if etag and "-" not in etag and etag != md5.hexdigest():
        raise VerificationError(f"the source's ETag {etag} differs from the MD5 of the data read")


# ---- copies ----------------------------------------------------------------


class Copy:
    """The state of one copy (one item of a request)."""

    def __init__(self, source, target, webhook):
        self.id = uuid.uuid4().hex
        self.source, self.target, self.webhook = source, target, webhook
        self.state = "queued"
        self.bytes = 0
        self.total = None
        self.files = 0
        self.error = None
        self.verified = None
        self.md5 = None
        self.webhook_delivery = None  # once the webhook is sent: pending, delivered, refused, dropped
        self._lock = threading.Lock()

    def add(self, nbytes=0, files=0):
        with self._lock:
            self.bytes += nbytes
            self.files += files

    def status(self) -> dict:
        return {"id": self.id, "from": "skerry://" + "/".join(self.source).rstrip("/"),
                "to": "skerry://" + "/".join(self.target), "state": self.state, "bytes": self.bytes,
                "total": self.total, "files": self.files, "error": self.error,
                "verified": self.verified, "md5": self.md5, "webhook": self.webhook_delivery}


class Stager:
    def __init__(self, fs, workers: int = 4, retries: int = 4, backoff: float = 1.0,
                 on_finished=None, on_file=None, redact=None):
        """``fs``: a ``SkerryFileSystem``; ``workers``: copies running at once;
        ``retries``: further tries of a file after a transient error, ``backoff`` seconds
        before the first, doubling; ``on_finished(copy)`` once per copy (a ``Copy``);
        ``on_file(path, info)`` after each file committed; ``redact(text)`` scrubs secrets."""
        self.fs = fs
        self.retries, self.backoff = retries, backoff
        self.on_finished, self.on_file = on_finished, on_file
        self.redact = redact or (lambda text: text)
        self._copies: dict[str, Copy] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skerry-copy")
        self._stopping = threading.Event()

    def submit(self, items) -> list[str]:
        copies = [Copy(i["from"], i["to"], i["webhook"]) for i in validate(self.fs, items)]
        with self._lock:
            for c in copies:
                self._copies[c.id] = c
            self._forget_oldest_finished()
        for c in copies:
            self._pool.submit(self._run, c)
        return [c.id for c in copies]

    def _forget_oldest_finished(self):
        """Keep at most ``KEEP_COPIES`` copies: the oldest finished ones go first."""
        excess = len(self._copies) - KEEP_COPIES
        for copy_id in [i for i, c in self._copies.items() if c.state in ("done", "failed")][:max(excess, 0)]:
            del self._copies[copy_id]

    def status(self, copy_id: str) -> dict | None:
        c = self._copies.get(copy_id)
        return c.status() if c else None

    def statuses(self) -> list[dict]:
        """Every copy kept (at most ``KEEP_COPIES``), oldest first."""
        with self._lock:
            copies = list(self._copies.values())
        return [c.status() for c in copies]

    def shutdown(self, wait=False):
        """Stop: queued copies are dropped, running ones fail at their next block
        (cleaning up as on any failure)."""
        self._stopping.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # ---- one copy ---------------------------------------------------------

    def _run(self, c: Copy):
        c.state = "running"
        try:
            self._copy(c)
            c.state = "done"
        except Exception as e:
            if self._stopping.is_set() and not isinstance(e, InterruptedError):
                log.info("copy %s: %s, while the server was stopping", c.id, self.redact(describe(e)))
                e = InterruptedError(STOPPING)
            c.error = self.redact(f"copying {c.status()['from']} to {c.status()['to']} failed: {describe(e)}")
            c.state = "failed"
            log.warning("copy %s: %s", c.id, c.error)
        if self.on_finished:
            try:
                self.on_finished(c)
            except Exception as e:  # a notification problem must not change the copy's state
                log.warning("copy %s: notifying its end failed: %s", c.id, describe(e))

    def _copy(self, c: Copy):
        src_name, src = c.source
        dst_name, dst = c.target
        # adaptors connect on first use: reaching them is retried like any transfer
        src_fs = self._retrying(lambda: self.fs.adaptors[src_name])
        dst_fs = self._retrying(lambda: self.fs.adaptors[dst_name])
        info = self._retrying(lambda: src_fs.info(src))
        if info["type"] == "directory":
            found = self._retrying(lambda: src_fs.find(src, detail=True))
            prefix = src.strip("/")
            files = []
            for path, finfo in sorted(found.items()):
                if finfo.get("type", "file") != "file":
                    continue
                rel = path.strip("/")[len(prefix):].lstrip("/") if prefix else path.strip("/")
                files.append((path.strip("/"), posixpath.join(dst, rel), finfo.get("size") or 0))
        else:
            files = [(src, dst, info.get("size") or 0)]
        c.total = sum(size for _, _, size in files)
        made = set()
        if len(files) == 1:
            results = [self._copy_one(c, src_fs, files[0], dst_name, dst_fs, made)]
            c.md5 = results[0][1]
        else:
            # many small files: latency, not bandwidth, is the limit; overlap them
            with ThreadPoolExecutor(FILES_AT_ONCE, thread_name_prefix=f"skerry-copy-{c.id[:8]}") as pool:
                futures = [pool.submit(self._copy_one, c, src_fs, f, dst_name, dst_fs, made) for f in files]
                try:
                    results = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        checks = {check for check, _ in results}
        c.verified = "size" if "size" in checks or not checks else "size+etag"

    def _copy_one(self, c, src_fs, file, dst_name, dst_fs, made):
        """One file, retried after transient errors; returns (what was verified, MD5 hex)."""
        s, d, size = file
        attempt = 0
        while True:
            progress = [0]
            try:
                result = self._copy_file(c, src_fs, s, dst_name, dst_fs, d, made, size, progress)
                c.add(files=1)
                return result
            except Exception as e:
                c.add(-progress[0])
                if not is_transient(e) or attempt >= self.retries:
                    raise
                delay = self.backoff * 2 ** attempt
                attempt += 1
                log.info("copy %s: %s; retry %d of %s in %.1f s", c.id, describe(e), attempt, s, delay)
                if self._stopping.wait(delay):
                    raise InterruptedError(STOPPING) from None

    def _retrying(self, call):
        for attempt in range(self.retries + 1):
            try:
                return call()
            except Exception as e:
                if not is_transient(e) or attempt >= self.retries:
                    raise
                log.info("%s; retrying in %.1f s", describe(e), self.backoff * 2 ** attempt)
                if self._stopping.wait(self.backoff * 2 ** attempt):
                    raise InterruptedError(STOPPING) from None

    def _copy_file(self, c, src_fs, src, dst_name, dst_fs, dst, made, expected_size, progress):
        """Stream one file; returns (what was verified, source MD5 hex)."""
        md5 = hashlib.md5()
        size = 0
        s3 = _object_store(self.fs, dst_name, dst_fs)
        with src_fs.open(src, "rb", block_size=BLOCK) as fin:
            if s3 is not None:
                upload = S3Upload(s3, dst_fs._join(dst))
                try:
                    size = self._stream(c, fin, upload.write, md5, expected_size, progress)
                    _check_source(fin, md5)
                    expected = upload.commit()
                except BaseException:
                    upload.abort()
                    raise
                head = s3.call_s3("head_object", Bucket=upload.bucket, Key=upload.key)
                stored = head.get("ETag", "").strip('"')
                if head.get("ContentLength") != size or stored != expected:
                    s3.call_s3("delete_object", Bucket=upload.bucket, Key=upload.key)
                    raise VerificationError(f"S3 holds {head.get('ContentLength')} bytes with ETag {stored}, "
                                            f"expected {size} bytes with ETag {expected}")
                info = {"name": dst, "type": "file", "size": size, "ETag": stored,
                        "LastModified": head.get("LastModified")}
                check = "etag"
            else:
                folder = posixpath.dirname(dst)
                if folder and dst_name in self.fs.make_parents and folder not in made:
                    dst_fs.makedirs(folder, exist_ok=True)
                    made.add(folder)
                with atomic.writing(dst_fs, dst, token=c.id[:12]) as w:
                    with dst_fs.open(w.temp, "wb") as fout:
                        size = self._stream(c, fin, fout.write, md5, expected_size, progress)
                    _check_source(fin, md5)
                    if dst_fs.isdir(dst):  # a rename would move the file into that folder
                        raise IsADirectoryError(f"the target {dst_name}/{dst} is a folder")
                    written = dst_fs.info(w.temp).get("size")
                    if written != size:
                        raise VerificationError(f"the target holds {written} bytes, the source gave {size}")
                info = dst_fs.info(dst)
                check = "size"
        dst_fs.invalidate_cache(posixpath.dirname(dst))  # we wrote behind the backend's listing cache
        if self.on_file:
            self.on_file(f"{dst_name}/{dst}", info)
        return check, md5.hexdigest()

    def _stream(self, c, fin, write, md5, expected_size, progress) -> int:
        """Copy ``fin`` to ``write`` block by block, hashing; reading runs one block ahead."""
        size = 0
        blocks = _read_ahead(fin) if expected_size > BLOCK else iter(lambda: fin.read(BLOCK), b"")
        try:
            for block in blocks:
                if self._stopping.is_set():
                    raise InterruptedError(STOPPING)
                md5.update(block)
                write(block)
                size += len(block)
                progress[0] += len(block)
                c.add(len(block))
        finally:
            if hasattr(blocks, "close"):
                blocks.close()  # stop the reader before the source is closed
        return size


def _read_ahead(fin, depth=2):
    """Blocks of ``fin``, read in a thread ``depth`` blocks ahead of the consumer."""
    blocks = queue.Queue(depth)
    stop = threading.Event()

    def read():
        try:
            while not stop.is_set():
                block = fin.read(BLOCK)
                blocks.put(block)
                if not block:
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            blocks.put(e)

    reader = threading.Thread(target=read, name="skerry-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            block = blocks.get()
            if isinstance(block, BaseException):
                raise block
            if not block:
                return
            yield block
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                blocks.get(timeout=0.1)
            except queue.Empty:
                pass
