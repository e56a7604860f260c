"""Schemathesis hooks for scripts/schemathesis.sh.

Long-polls: a valid `wait_ms` (0 to 60000) is folded into 0-249 ms, so a request that finds
its lock busy does not hold the run for up to a minute. Values outside the documented range
are left alone, so negative tests still send them. (`map_case` runs in every phase, coverage
included; `map_body` does not.)
"""

import schemathesis

WAIT_MS_MAX = 60_000


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if isinstance(body, dict):
        wait = body.get("wait_ms")
        if isinstance(wait, int) and not isinstance(wait, bool) and 0 <= wait <= WAIT_MS_MAX:
            body["wait_ms"] = wait % 250
    return case
