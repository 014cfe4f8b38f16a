#!/usr/bin/env python3
"""Embeds deploy/aws/bootstrap.sh into the launch template's user data in deploy/aws/sdserve.yaml.

User data is limited to 16 KB, so the script travels gzip-compressed and base64-encoded between the
"# BEGIN bootstrap.sh" and "# END bootstrap.sh" lines; on the instance, `base64 -d | gunzip` gives
back bootstrap.sh byte for byte. Run this after editing bootstrap.sh:

    deploy/aws/render.py            # rewrite the block
    deploy/aws/render.py --check    # exit 1 if the template's copy differs from bootstrap.sh (tests, CI)

Only the Python standard library; the output is deterministic (gzip mtime 0)."""
import base64
import gzip
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
TEMPLATE = HERE / "sdserve.yaml"
SCRIPT = HERE / "bootstrap.sh"
BEGIN, END = "# BEGIN bootstrap.sh", "# END bootstrap.sh"
USER_DATA_LIMIT = 16384


def block_bounds(lines):
    begin = next(i for i, line in enumerate(lines) if line.lstrip().startswith(BEGIN))
    end = next(i for i, line in enumerate(lines) if line.lstrip().startswith(END))
    if end <= begin:
        raise SystemExit("render: the END marker comes before BEGIN in sdserve.yaml")
    return begin, end


def encode(script: bytes) -> list[str]:
    blob = base64.b64encode(gzip.compress(script, compresslevel=9, mtime=0)).decode()
    return [blob[i:i + 76] for i in range(0, len(blob), 76)]


def embedded_script(text: str) -> bytes:
    lines = text.splitlines()
    begin, end = block_bounds(lines)
    body = [line.strip() for line in lines[begin + 1:end]]
    if not body or body[0] != "- |":
        raise SystemExit("render: expected '- |' right after the BEGIN marker")
    return gzip.decompress(base64.b64decode("".join(body[1:])))


def render(text: str, script: bytes) -> str:
    lines = text.splitlines()
    begin, end = block_bounds(lines)
    indent = lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]
    new = [f"{indent}- |"] + [f"{indent}  {chunk}" for chunk in encode(script)]
    return "\n".join(lines[:begin + 1] + new + lines[end:]) + "\n"


def user_data_size(text: str) -> int:
    """Bytes of user data before base64 (with parameter values of typical length): the Sub header,
    the embedded blob and the footer."""
    lines = text.splitlines()
    begin, end = block_bounds(lines)
    blob = sum(len(line.strip()) + 1 for line in lines[begin + 2:end])
    header_start = next(i for i in range(begin, 0, -1) if lines[i].strip() == "#!/bin/bash")
    header = sum(len(line.strip()) + 1 for line in lines[header_start:begin])
    footer = sum(len(line.strip()) + 1 for line in lines[end + 1:end + 5])
    return header + blob + footer + 600  # room for long parameter values (ARNs, URLs)


def main(argv):
    text = TEMPLATE.read_text()
    script = SCRIPT.read_bytes()
    if "--check" in argv:
        if embedded_script(text) != script:
            print("render: deploy/aws/sdserve.yaml embeds an old bootstrap.sh; run deploy/aws/render.py",
                  file=sys.stderr)
            return 1
        return 0
    out = render(text, script)
    size = user_data_size(out)
    if size > USER_DATA_LIMIT:
        print(f"render: user data would be about {size} bytes, over the {USER_DATA_LIMIT}-byte limit",
              file=sys.stderr)
        return 1
    TEMPLATE.write_text(out)
    print(f"render: embedded bootstrap.sh ({len(script)} bytes; user data about {size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
