"""The baseline: a bare host python3 process that loads an action file and calls it, as the worker
would without any isolation. Usage: python3 bare_action.py ACTION_FILE JSON_PARAMETERS"""

import json
import runpy
import sys

namespace = runpy.run_path(sys.argv[1], run_name="attune_action_module")
print(json.dumps(namespace["run"](**json.loads(sys.argv[2]))))
