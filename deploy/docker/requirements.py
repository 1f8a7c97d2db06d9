"""Print the requirements of fleetinfer (pyproject.toml) with the given extras, one a line:
the build installs them in a layer of their own, so a change to the sources reinstalls only
fleetinfer itself. usage: python3 requirements.py pyproject.toml redis,sqs,postgresql"""

import re
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
optional = project.get("optional-dependencies", {})
wanted = [extra for extra in sys.argv[2].split(",") if extra] if len(sys.argv) > 2 else []
seen: set[str] = set()
requirements = list(project["dependencies"])
while wanted:
    extra = wanted.pop()
    if extra in seen:
        continue
    if extra not in optional:
        sys.exit(f"unknown extra {extra!r}: expected one of {', '.join(sorted(optional))}")
    seen.add(extra)
    for requirement in optional[extra]:
        inner = re.fullmatch(rf"{project['name']}\[(.*)\]", requirement)
        if inner:
            wanted += inner.group(1).split(",")
        else:
            requirements.append(requirement)
print("\n".join(dict.fromkeys(requirements)))
