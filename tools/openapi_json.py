#!/usr/bin/env python3
"""Writes docs/openapi.json from docs/openapi.yaml (the source). The JSON is what the binary embeds
and serves at GET /openapi.json (CMakeLists.txt), so the build needs no YAML parser; run this after
editing the YAML (tests/e2e/test_api_extra.py fails while the two disagree). Needs PyYAML."""
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    out = ROOT / "docs" / "openapi.json"
    out.write_text(json.dumps(spec, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out.relative_to(ROOT)} ({len(spec['paths'])} paths)", file=sys.stderr)


if __name__ == "__main__":
    main()
