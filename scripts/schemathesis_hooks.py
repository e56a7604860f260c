"""Schemathesis hooks for scripts/schemathesis.sh.

Long-polls: a valid `wait_ms` (0 to 60000) is folded into 0-249 ms, so a request that finds
its lock busy does not hold the run for up to a minute. Values outside the documented range
are left alone, so negative tests still send them. (`map_case` runs in every phase, coverage
included; `map_body` does not.)

The run's own key: a `DELETE /v1/keys/{id}` naming it (the stateful phase finds its id through
`GET /v1/keys`) is sent to another id instead, or every later case would only see 401s.
"""

import os

import schemathesis

WAIT_MS_MAX = 60_000


ADMIN_KEY_ID = os.environ.get("ST_ADMIN_KEY_ID")


@schemathesis.hook
def map_case(context, case):
    parameters = case.path_parameters
    if (
        ADMIN_KEY_ID
        and case.method.upper() == "DELETE"
        and isinstance(parameters, dict)
        and parameters.get("id") == ADMIN_KEY_ID
    ):
        parameters["id"] = "key_0000000000000000"
    body = case.body
    if isinstance(body, dict):
        wait = body.get("wait_ms")
        # Whole numbers written as floats (1000.0) are accepted by the server too.
        if (
            isinstance(wait, (int, float))
            and not isinstance(wait, bool)
            and float(wait).is_integer()
            and 0 <= wait <= WAIT_MS_MAX
        ):
            body["wait_ms"] = int(wait) % 250
    return case
