"""Job and result messages, in scorefleet's wire formats (README "Message formats").

`parse_job` follows crates/core/src/job.rs rule for rule: body ≤ 64 KiB,
`v` the integer 1, exactly the fields v/job_id/url/run_id(/attrs), no
duplicate keys, ids of 1-128 printable ASCII characters, s3/https/http URLs of
at most 2,048 bytes without credentials, attrs an object of at most 4 KiB as
compact JSON. A broken body whose `job_id` is still readable raises
`InvalidJob` carrying that id, so the worker can answer `invalid_message`.

`ok_result` / `error_result` build result messages with scorefleet's fields
in scorefleet's order.
"""
import json
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

MAX_BODY_BYTES = 64 * 1024
MAX_ID_LEN = 128
MAX_URL_LEN = 2048
MAX_ATTRS_BYTES = 4096
FIELDS = {"v", "job_id", "url", "run_id", "attrs"}
REQUIRED = ("v", "job_id", "url", "run_id")


class InvalidJob(Exception):
    """Not a valid v1 job; `job_id` is set when one could be recovered."""

    def __init__(self, message, job_id=None):
        super().__init__(message)
        self.job_id = job_id


class _Obj(dict):
    """A JSON object that remembers whether a key appeared twice."""

    duplicate = None


def _pairs(pairs):
    obj = _Obj()
    for k, v in pairs:
        if k in obj and obj.duplicate is None:
            obj.duplicate = k
        obj[k] = v
    return obj


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _id_error(field, s):
    if not isinstance(s, str):
        return f"`{field}` must be a string"
    if not s:
        return f"`{field}` is empty"
    if len(s) > MAX_ID_LEN:
        return f"`{field}` is longer than {MAX_ID_LEN} characters"
    if not all("!" <= c <= "~" for c in s):
        return f"`{field}` must be printable ASCII without spaces"
    return None


BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-.")


def _bucket_ok(b):
    return 3 <= len(b) <= 63 and set(b) <= BUCKET_CHARS and b[0] not in "-." and b[-1] not in "-."


def parse_url(url):
    """('s3', bucket, key) or ('http', url, None); raises ValueError."""
    if len(url.encode()) > MAX_URL_LEN:
        raise ValueError(f"url is longer than {MAX_URL_LEN} bytes")
    if url.startswith("s3://"):
        bucket, sep, key = url[5:].partition("/")
        if not sep:
            raise ValueError("s3 url has no key")
        if not _bucket_ok(bucket):
            raise ValueError(f"invalid bucket name {bucket!r}")
        if not key:
            raise ValueError("s3 url has an empty key")
        if len(key.encode()) > 1024 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key):
            raise ValueError("s3 key is too long or has control characters")
        return ("s3", bucket, key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scheme `{parts.scheme}` is not supported (use s3, https or http)")
    if parts.username or parts.password:
        raise ValueError("credentials in urls are refused")
    if not parts.hostname:
        raise ValueError("url has no host")
    return ("http", url, None)


def parse_job(body):
    """dict(job_id, url, run_id, attrs, source) from a message body, or InvalidJob."""
    if len(body.encode()) > MAX_BODY_BYTES:
        raise InvalidJob(f"body is longer than {MAX_BODY_BYTES} bytes")
    try:
        obj = json.loads(body, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except ValueError as e:
        raise InvalidJob(f"not a JSON object: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidJob("not a JSON object")
    rid = obj.get("job_id")
    recovered = rid if _id_error("job_id", rid) is None else None

    def bad(msg):
        return InvalidJob(msg, recovered)

    if "v" not in obj:
        raise bad("missing field `v`")
    v = obj["v"]
    if type(v) is not int or v != 1:
        raise bad(f"unsupported message version {json.dumps(v)}; this worker reads v1")
    if obj.duplicate is not None:
        raise bad(f"duplicate field `{obj.duplicate}`")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise bad(f"unknown field `{unknown[0]}`")
    for f in REQUIRED:
        if f not in obj:
            raise bad(f"missing field `{f}`")
    for f in ("job_id", "run_id"):
        err = _id_error(f, obj[f])
        if err:
            raise bad(err)
    if not isinstance(obj["url"], str):
        raise bad("`url` must be a string")
    try:
        source = parse_url(obj["url"])
    except ValueError as e:
        raise bad(str(e)) from None
    attrs = obj.get("attrs")
    if attrs is not None:
        if not isinstance(attrs, dict):
            raise bad("`attrs` must be an object")
        if len(json.dumps(attrs, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_ATTRS_BYTES:
            raise bad(f"`attrs` is larger than {MAX_ATTRS_BYTES} bytes")
    return {"job_id": obj["job_id"], "url": obj["url"], "run_id": obj["run_id"], "attrs": attrs, "source": source}


def now_rfc3339():
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _result(job, status, attempts, worker, received, model=None, top_k=None, error=None):
    r = {"v": 1, "job_id": job["job_id"], "run_id": job.get("run_id", ""), "url": job.get("url", ""),
         "status": status}
    if model:
        r["model"] = model
    if top_k:
        r["top_k"] = top_k
    if error:
        r["error"] = error
    r.update(attempts=attempts, worker=worker, completed_at=now_rfc3339(),
             latency_ms=int((time.monotonic() - received) * 1000))
    if job.get("attrs") is not None:
        r["attrs"] = job["attrs"]
    return r


def ok_result(job, attempts, worker, received, model, top_k):
    return _result(job, "ok", attempts, worker, received, model=model, top_k=top_k)


def error_result(job, attempts, worker, received, kind, message):
    return _result(job, "error", attempts, worker, received, error={"kind": kind, "message": message})
