# A script-style action: no run/main function; reads its parameters from stdin itself.
import json
import sys

parameters = json.load(sys.stdin)
print("some log line")
print(json.dumps({"doubled": parameters["n"] * 2}))
