"""{{name}}: a toka-host agent in Python, made by `toka-host new agent {{name}} --lang python`.

The host calls ``run`` once per task; the returned string is what ``toka-host run`` prints. Input ``{"name": "Ada"}``
gives ``{"greeting":"Hello, Ada!"}``. Raise ``Err(AgentError_InvalidInput(...))``, ``Err(AgentError_Failed(...))`` or
``Err(AgentError_Denied(...))`` to fail the task.

Imports: ``wit_world`` (the generated world), ``wit_world.imports.log`` (logs through the host); also available,
each checked against the run's grants: ``wit_world.imports.events`` (``emit``), ``wit_world.imports.state``
(``--state ro|rw``), ``wit_world.imports.tools`` (``--allow-tool NAME``). Files of granted directories (``--dir``)
and variables (``--env``) through ``open`` and ``os.environ``. Build with ``toka-host build``.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.toka_agent_types import AgentError_InvalidInput, Task


class WitWorld(wit_world.WitWorld):
    def run(self, task: Task) -> str:
        try:
            value = json.loads(task.input)
        except ValueError as err:
            raise Err(AgentError_InvalidInput(f"bad input JSON: {err}")) from None
        if not isinstance(value, dict):
            raise Err(AgentError_InvalidInput("input must be a JSON object"))
        name = value.get("name", "world")
        if not isinstance(name, str) or not name:
            raise Err(AgentError_InvalidInput('"name" must be a non-empty string'))
        log.log(log.Level.INFO, f"greeting {name}")
        return json.dumps({"greeting": f"Hello, {name}!"}, separators=(",", ":"), ensure_ascii=False)
