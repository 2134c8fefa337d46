"""Folders on S3 adaptors, where s3fs alone does not behave like a file system.

On an object store a folder exists only while an object lies under it. WebDAV clients
(and litmus) expect MKCOL to make an empty folder that a PUT can then write into, so
an empty folder is kept as the zero-byte object ``folder/`` (the convention of the S3
console and rclone). s3fs lists that object as a file and cannot write, move or
remove it (it strips trailing slashes); these functions do it with the S3 API.
Which adaptors are object stores, the table of adaptor types says (``object_store``).
"""

from fsspec.implementations.dirfs import DirFileSystem

_BATCH = 1000  # the S3 API's limit of keys per DeleteObjects request


def _bucket_key(fs: DirFileSystem, inner: str) -> tuple[object, str, str]:
    s3 = fs.fs
    bucket, key, _ = s3.split_path(fs._join(inner))
    return s3, bucket, key.rstrip("/")


def _keys_under(s3, bucket: str, key: str) -> list[str]:
    keys, token = [], None
    while True:
        page = s3.call_s3("list_objects_v2", Bucket=bucket, Prefix=key + "/",
                          **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return keys


def is_marker(info: dict) -> bool:
    """True for a ``folder/`` object as s3fs lists it (a "file" whose key ends in a slash)."""
    return info.get("type") == "file" and str(info.get("Key", "")).endswith("/")


def make_folder_marker(fs: DirFileSystem, inner: str) -> None:
    """Make the empty folder ``inner``: the zero-byte object ``inner/``."""
    s3, bucket, key = _bucket_key(fs, inner)
    s3.call_s3("put_object", Bucket=bucket, Key=key + "/", Body=b"")
    s3.invalidate_cache(f"{bucket}/{key}")


def remove_folder_marker(fs: DirFileSystem, inner: str) -> None:
    """Remove the empty folder ``inner``: its ``inner/`` object alone (what lies under it stays)."""
    s3, bucket, key = _bucket_key(fs, inner)
    s3.call_s3("delete_object", Bucket=bucket, Key=key + "/")
    s3.invalidate_cache(f"{bucket}/{key}")


def remove_object_tree(fs: DirFileSystem, inner: str) -> None:
    """Remove the object ``inner``, or every object under ``inner/`` (markers included)."""
    s3, bucket, key = _bucket_key(fs, inner)
    keys = _keys_under(s3, bucket, key)
    if not keys:
        if not s3.exists(f"{bucket}/{key}"):
            raise FileNotFoundError(inner)
        keys = [key]
    for i in range(0, len(keys), _BATCH):
        s3.call_s3("delete_objects", Bucket=bucket,
                   Delete={"Objects": [{"Key": k} for k in keys[i:i + _BATCH]], "Quiet": True})
    s3.invalidate_cache(f"{bucket}/{key}")


def move_object_tree(fs: DirFileSystem, src: str, dst: str) -> None:
    """Move folder ``src`` to ``dst`` in one bucket: server-side copies, then removal.

    Objects over 5 GB need a multipart copy, which the S3 API does not do in one call:
    those are copied by s3fs (which does) and the markers by ``copy_object``.
    """
    s3, bucket, src_key = _bucket_key(fs, src)
    _, dst_bucket, dst_key = _bucket_key(fs, dst)
    keys = _keys_under(s3, bucket, src_key)
    if not keys:
        raise FileNotFoundError(src)
    for key in keys:
        target = dst_key + key[len(src_key):]
        if key.endswith("/"):
            s3.call_s3("copy_object", Bucket=dst_bucket, Key=target, CopySource={"Bucket": bucket, "Key": key})
        else:
            s3.cp_file(f"{bucket}/{key}", f"{dst_bucket}/{target}")
    s3.invalidate_cache(f"{dst_bucket}/{dst_key}")
    remove_object_tree(fs, src)
