"""A umockdev test bed driven over stdin/stdout (one JSON command per line).

Run under ``umockdev-wrapper`` with a Python that has ``gi`` (Debian's
python3-gi); the first line printed is ``{"root": DIR}``, the value child
processes need as ``UMOCKDEV_DIR`` (with ``LD_PRELOAD`` of
libumockdev-preload, which the wrapper sets).  Commands:
``{"op": "add", "subsystem", "name", "parent", "attrs": [..], "props": [..]}`` →
``{"syspath"}``; ``{"op": "set", "syspath", "props": {k: v}}``;
``{"op": "uevent", "syspath", "action"}``; ``{"op": "remove", "syspath"}``.
"""

import json
import sys

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402


def main() -> None:
    bed = UMockdev.Testbed.new()
    print(json.dumps({"root": bed.get_root_dir()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "add":
                path = bed.add_device(cmd["subsystem"], cmd["name"], cmd.get("parent"),
                                      cmd.get("attrs", []), cmd.get("props", []))
                reply = {"syspath": path}
            elif op == "set":
                for key, value in cmd["props"].items():
                    bed.set_property(cmd["syspath"], key, value)
                reply = {"ok": True}
            elif op == "uevent":
                bed.uevent(cmd["syspath"], cmd["action"])
                reply = {"ok": True}
            elif op == "remove":
                bed.remove_device(cmd["syspath"])
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown op {op}"}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
