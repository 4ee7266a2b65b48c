"""An ``SVC_ON_HEALTH_CHANGE`` hook for tests: appends each transition, as JSON, to the file
named by ``HEALTH_HOOK_FILE``."""

import json
import os

from services.health import HealthChange


def record(change: HealthChange) -> None:
    with open(os.environ["HEALTH_HOOK_FILE"], "a") as out:
        out.write(json.dumps(change.as_json()) + "\n")
