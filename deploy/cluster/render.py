"""Render deploy/cluster/aws-gpu.yaml for `ray up`: its {NAME} placeholders (the EFS host) filled
from this shell's environment, since the launcher's node commands run in fresh login shells that
see none of it. Prints the rendered YAML; one line and exit 2 when a variable is unset.

    EFS_DNS=fs-XXXX.efs.us-east-1.amazonaws.com python deploy/cluster/render.py \\
        deploy/cluster/aws-gpu.yaml > ~/.apgrid/aws-gpu.yaml
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


def render(text: str, env: dict[str, str]) -> str:
    missing = sorted({name for name in PLACEHOLDER.findall(text) if not env.get(name)})
    if missing:
        raise KeyError(", ".join(missing))
    return PLACEHOLDER.sub(lambda m: env[m.group(1)], text)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: render.py CLUSTER.yaml > RENDERED.yaml", file=sys.stderr)
        return 2
    try:
        print(render(Path(argv[0]).read_text(), dict(os.environ)), end="")
    except KeyError as exc:
        print(f"render: set {exc.args[0]} in the environment (see the file's header)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
