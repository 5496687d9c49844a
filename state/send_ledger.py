"""The gateway's send ledger in Redis: each send id is handed to a provider once.

One string key per send id (``{prefix}{send_id}``) with a TTL:

=================  ===============================================================
value              meaning
=================  ===============================================================
``claim:T``        a gateway process took the send at epoch ms ``T`` and is calling
                   the provider; a claim older than the lease was left by a crash
``done:RESULT``    finished: ``accepted``, ``failed``, ``bounced``, ``dead_letter``
=================  ===============================================================

:meth:`SendLedger.claim_many` is one pipelined round trip for a batch (a Lua script per
send, atomic per key): a send seen twice (a restart re-reading uncommitted offsets, a
replayed topic, a duplicated command) finds ``done`` and is skipped; a claim left by a
crashed process is taken over after the lease and sent again with the provider's
idempotence key where the provider has one (Unisender Go), so the window where a crash
can cause a second call is one HTTP request on providers without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NEW, DONE, BUSY, TAKEOVER = "new", "done", "busy", "takeover"

_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 5) == 'done:' then return 'done' end
  local at = tonumber(string.sub(cur, 7))
  if at and tonumber(ARGV[1]) - at < tonumber(ARGV[2]) then return 'busy' end
  redis.call('SET', KEYS[1], 'claim:' .. ARGV[1], 'EX', tonumber(ARGV[3]))
  return 'takeover'
end
redis.call('SET', KEYS[1], 'claim:' .. ARGV[1], 'EX', tonumber(ARGV[3]))
return 'new'
"""


@dataclass(frozen=True)
class LedgerConfig:
    prefix: str = "cdp:send:"
    lease_ms: int = 60_000  # a claim older than this was left by a crashed process
    ttl_s: int = 14 * 86400  # how long a send id is remembered (≥ any replay window)


class SendLedger:
    """Claims and results of send ids in Redis (one per gateway process)."""

    def __init__(self, url: str, config: LedgerConfig = LedgerConfig()) -> None:
        import redis

        self.config = config
        self._r = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self._claim = self._r.register_script(_CLAIM)

    def claim_many(self, send_ids: Sequence[str], now_ms: int) -> list[str]:
        """Per send id: ``new`` / ``takeover`` (call the provider), ``done`` (skip),
        ``busy`` (another live process holds it: try again after the lease)."""
        c = self.config
        pipe = self._r.pipeline(transaction=False)
        for sid in send_ids:
            self._claim(keys=[c.prefix + sid], args=[now_ms, c.lease_ms, c.ttl_s], client=pipe)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in pipe.execute()]

    def finish_many(self, results: Iterable[tuple[str, str]]) -> None:
        """Record ``(send_id, result)`` pairs as done (after their receipts are out)."""
        pipe = self._r.pipeline(transaction=False)
        for sid, result in results:
            pipe.set(self.config.prefix + sid, f"done:{result}", ex=self.config.ttl_s)
        pipe.execute()

    def state(self, send_id: str) -> str | None:
        v = self._r.get(self.config.prefix + send_id)
        return v.decode() if v is not None else None

    def forget(self, send_ids: Iterable[str]) -> None:
        keys = [self.config.prefix + s for s in send_ids]
        if keys:
            self._r.delete(*keys)
