"""Write or check the committed OpenAPI spec (`openapi.json`): CI fails when code and spec drift apart."""

import json
import sys
import tempfile
from pathlib import Path

from lethe.settings import Settings


def current_spec() -> str:
    from api.app import create_app

    # The spec does not depend on configuration; build the app against a throwaway embedded default.
    with tempfile.TemporaryDirectory() as tmp:
        spec = create_app(Settings(data_dir=Path(tmp))).openapi()
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    action, path = argv[0], Path(argv[1])
    spec = current_spec()
    if action == "write":
        path.write_text(spec)
        print(f"wrote {path}")
        return 0
    if not path.exists() or path.read_text() != spec:
        print(f"{path} is out of date with the code: run `make openapi` and commit it", file=sys.stderr)
        return 1
    print(f"{path} matches the code")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
