"""What GitOps tools conclude about a GaudiTrainingJob object.

- `argocd_health(obj)`: runs `deploy/argocd/gauditrainingjob-health.lua` under a real Lua
  5.1 interpreter (lupa), set up as Argo CD's gopher-lua runs custom health checks: the
  object as the global `obj`, only the base and table libraries.
- `kstatus(obj)`: Flux's kstatus library (the `kstatus` tool that hack/toolchain.sh builds
  from github.com/fluxcd/cli-utils): Current, InProgress or Failed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
HEALTH_LUA = ROOT / "deploy" / "argocd" / "gauditrainingjob-health.lua"
STATUSES = ROOT / "tests" / "unit" / "gitops" / "statuses"
ARGOCD_STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
KSTATUS = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3")) / "bin/kstatus"

# Argo CD opens only these for a custom health check (util/lua: package, base, table and a
# reduced os); everything else must be absent, so a script that needs it fails here too.
_SANDBOX = """
debug.setmetatable("", nil)  -- no ("x"):find(...): the string library is not there
string, math, io, os, debug, coroutine = nil, nil, nil, nil, nil, nil
dofile, loadfile = nil, nil
"""


def _lua_value(lua: Any, value: Any) -> Any:
    """JSON -> Lua as Argo CD decodes it: objects and arrays become tables (arrays from 1)."""
    if isinstance(value, dict):
        return lua.table_from({k: _lua_value(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_lua_value(lua, v) for v in value])
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return float(value)  # gopher-lua numbers are float64


def argocd_health(obj: dict[str, Any], script: Path = HEALTH_LUA) -> dict[str, str]:
    from lupa import lua51

    lua = lua51.LuaRuntime(register_eval=False, unpack_returned_tuples=True)
    lua.execute(_SANDBOX)
    lua.globals().obj = _lua_value(lua, obj)
    result = lua.execute(script.read_text())
    if lua.eval("type")(result) != "table":
        raise AssertionError(f"the health script returned {result!r}, not a table")
    out = {str(k): str(v) for k, v in result.items()}
    if out.get("status") not in ARGOCD_STATUSES:
        raise AssertionError(f"not an Argo CD health status: {out}")
    return out


def kstatus(obj: dict[str, Any]) -> dict[str, str]:
    if not KSTATUS.exists():
        raise FileNotFoundError(f"{KSTATUS} is missing: run `bash hack/toolchain.sh kstatus`")
    out = subprocess.run(
        [str(KSTATUS)], input=json.dumps(obj), capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise AssertionError(f"kstatus failed: {out.stderr}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def load_statuses() -> dict[str, dict[str, Any]]:
    """The objects saved from the real operator, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(STATUSES.glob("*.json"))}
