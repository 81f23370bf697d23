"""envs/*.yaml (conda environments of the rules) agree with pyproject.toml's dependencies."""
import re
import tomllib

import yaml

from .conftest import ROOT

# Dependencies of the package that no rule's environment needs: Snakemake runs the rules, it is not run by them.
DRIVER_ONLY = {"snakemake"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_name(d): d.replace(" ", "") for d in deps}


def _pip_lines(path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    return [d for dep in env["dependencies"] if isinstance(dep, dict) for d in dep.get("pip", [])]


def _env(path) -> dict[str, str]:
    return {_name(d): d.replace(" ", "") for d in _pip_lines(path) if not d.startswith("-")}


def _constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return {_name(pin): pin.split("==", 1)[1] for pin in pins}


def test_every_env_pins_what_pyproject_pins():
    wanted = _pyproject()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs, "no conda environments under envs/"
    covered = set()
    for path in envs:
        env = _env(path)
        for name, requirement in env.items():
            assert name in wanted, f"{path.name}: {name} is not a dependency in pyproject.toml"
            assert requirement == wanted[name], f"{path.name}: {requirement} but pyproject.toml has {wanted[name]}"
        covered |= set(env)
    assert set(wanted) - DRIVER_ONLY <= covered, f"in no env: {set(wanted) - DRIVER_ONLY - covered}"


def test_constraints_pin_every_dependency_within_its_range():
    from packaging.requirements import Requirement

    pinned = _constraints()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement in [*_pyproject().values(), *extras["test"]]:
        req = Requirement(requirement)
        name = _name(req.name)
        assert name in pinned, f"constraints.txt: no pin for {name} (pyproject.toml has {requirement})"
        assert req.specifier.contains(pinned[name]), f"constraints.txt: {name}=={pinned[name]} is outside {requirement}"
    assert pinned.get("torch") == "2.13.0", "constraints.txt: torch must be the release the Makefile installs"


def test_every_env_installs_with_the_constraints():
    """Snakemake copies an env file under .snakemake/conda/ before conda reads it, so a path in it would not
    name the checkout's file: the env's post-deploy script, run from the checkout, pins it to constraints.txt
    and installs the package."""
    for path in sorted((ROOT / "envs").glob("*.yaml")):
        options = [line for line in _pip_lines(path) if line.startswith("-")]
        assert not options, f"{path.name}: pip options {options} would be read relative to .snakemake/conda/"
        script = path.with_name(f"{path.stem}.post-deploy.sh")
        assert script.is_file(), f"{path.name}: no {script.name}"
        assert "pip install -q -c constraints.txt -e ." in script.read_text(), f"{script.name} does not pin the env"


def test_every_rule_names_an_existing_env():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: conda env {env} does not exist"
