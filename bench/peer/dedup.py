"""Deduplication by job id in scorefleet's outcome table, the classic way.

Same table and item semantics as scorefleet (docs/protocol.md, "Dedup and leases"), so
`scorefleet-producer status` reads a peer run too: one item per `job_id`
with `status` (IN_PROGRESS / COMPLETED / FAILED), `owner`, `attempt`,
`lease_until_ms`, `run_id`, `expires_at` (TTL), and on completion `result`
and `finished_ms`.

- claim: one conditional PutItem: the item is absent, past its TTL, or an
  IN_PROGRESS lease that has ended. A refusal returns the old item
  (ReturnValuesOnConditionCheckFailure=ALL_OLD): COMPLETED/FAILED → re-send
  the stored result; a live lease → leave the message alone.
- finish: BatchWriteItem of the completed items, 25 per request (what a
  Python engineer batching API calls writes). Unlike scorefleet's finish it
  is not fenced: BatchWriteItem takes no conditions, so a worker whose lease
  expired and was taken over can overwrite the new owner's record with an
  equivalent result. The classic design accepts that.
- release: a conditional DeleteItem (owner matches) after a retryable failure,
  so the redelivery can claim at once.
- The lease is the queue's visibility timeout and is never renewed: the
  worker bounds how many messages it holds instead.
"""
import time

from botocore.exceptions import ClientError


def _now_ms():
    return int(time.time() * 1000)


class Claims:
    def __init__(self, ddb, table, owner, lease_s, ttl_s=7 * 86400, counters=None):
        self.ddb = ddb
        self.table = table
        self.owner = owner
        self.lease_ms = lease_s * 1000
        self.ttl_s = ttl_s
        self.counters = counters

    def claim(self, job_id, run_id, attempt):
        """('claimed', None) | ('done', stored result JSON or None) | ('busy', None)."""
        now = _now_ms()
        item = {
            "job_id": {"S": job_id},
            "status": {"S": "IN_PROGRESS"},
            "owner": {"S": self.owner},
            "attempt": {"N": str(attempt)},
            "lease_until_ms": {"N": str(now + self.lease_ms)},
            "run_id": {"S": run_id},
            "expires_at": {"N": str(now // 1000 + self.ttl_s)},
        }
        try:
            self.ddb.put_item(
                TableName=self.table, Item=item,
                ConditionExpression="attribute_not_exists(job_id) OR expires_at <= :now_s"
                                    " OR (#st = :ip AND lease_until_ms <= :now_ms)",
                ExpressionAttributeNames={"#st": "status"},
                ExpressionAttributeValues={":now_s": {"N": str(now // 1000)}, ":now_ms": {"N": str(now)},
                                           ":ip": {"S": "IN_PROGRESS"}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD")
            return ("claimed", None)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old = e.response.get("Item") or {}
        status = old.get("status", {}).get("S")
        if status in ("COMPLETED", "FAILED"):
            return ("done", old.get("result", {}).get("S"))
        return ("busy", None)

    def finish_many(self, outcomes):
        """outcomes: (job_id, run_id, attempt, status, result_json); BatchWriteItem ×25, unprocessed retried."""
        now = _now_ms()
        puts = [{"PutRequest": {"Item": {
            "job_id": {"S": job_id}, "status": {"S": status}, "owner": {"S": self.owner},
            "attempt": {"N": str(attempt)}, "lease_until_ms": {"N": "0"}, "run_id": {"S": run_id},
            "expires_at": {"N": str(now // 1000 + self.ttl_s)}, "result": {"S": result},
            "finished_ms": {"N": str(now)}}}} for job_id, run_id, attempt, status, result in outcomes]
        for i in range(0, len(puts), 25):
            pending = {self.table: puts[i:i + 25]}
            if self.counters:
                self.counters.add("ddb_items_written", len(pending[self.table]))
            for delay in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, None):
                left = self.ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not left.get(self.table):
                    break
                if delay is None:
                    raise RuntimeError(f"{len(left[self.table])} outcome writes unprocessed after retries")
                pending = left
                time.sleep(delay)

    def release(self, job_id):
        try:
            self.ddb.delete_item(
                TableName=self.table, Key={"job_id": {"S": job_id}},
                ConditionExpression="#st = :ip AND #ow = :o",
                ExpressionAttributeNames={"#st": "status", "#ow": "owner"},
                ExpressionAttributeValues={":ip": {"S": "IN_PROGRESS"}, ":o": {"S": self.owner}})
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
