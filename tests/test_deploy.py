"""Deployable workflow: hostile file names stay data, and the workflow runs from anywhere.

Every run here happens in a temporary folder outside the checkout, with the checkout's
Snakefile (`-s`) or as a `module` of a user's own Snakefile, and checks that nothing is
written into the checkout.
"""

import ast
import contextlib
import functools
import http.server
import importlib.metadata
import os
import re
import shutil
import ssl
import sys
import threading

import h5py
import numpy as np
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from skimage.io import imsave

from conftest import (
    REPO,
    copy_workflow,
    environments_in_checkout,
    load_config,
    run,
    smooth_images,
    snakemake,
    unavailable,
    write_config,
)

SMALL = load_config("small")
TINY_SWEEP = load_config("tiny_sweep")

# Image names a user's photographs may have; each command-like one would touch its own
# marker file if the shell ever ran it. The leading-dash name sits in the working
# directory itself, so the path handed to the script starts with "-".
HOSTILE = {
    "space": "photos/my photo 1.npy",
    "single quote": "photos/it's mine.npy",
    "double quote": 'photos/say "cheese".npy',
    "semicolon": "photos/x;touch PWNED-semicolon;.npy",
    "dollar parens": "photos/$(touch PWNED-dollar).npy",
    "backticks": "photos/a`touch PWNED-backtick`.npy",
    "star": "photos/star*.npy",
    "leading dash": "-rf --no-whiten.npy",
    "non-ASCII": "photos/café ü 日本 Ωμέγα.png",
}


def checkout_state():
    """Every path under the checkout with its size and modification time."""
    state = {}
    for root, dirs, files in os.walk(REPO):
        skip = {".git", ".pytest_cache", ".ruff_cache"} | (
            environments_in_checkout() if root == str(REPO) else set()
        )
        dirs[:] = [d for d in dirs if d not in skip]
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            state[os.path.relpath(os.path.join(root, name), REPO)] = (st.st_size, st.st_mtime_ns)
    return state


def pwned(*folders):
    """Marker files a hostile name would have created, in any of the folders."""
    found = []
    for folder in folders:
        found += [
            os.path.join(root, f)
            for root, _, files in os.walk(folder)
            for f in files
            if f.startswith("PWNED")
        ]
    return found


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """`results/images.h5` from one small image under each hostile name (whitened 32 x 32)."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "photos").mkdir()
    for img, name in zip(smooth_images(len(HOSTILE), 32), HOSTILE.values(), strict=True):
        if name.endswith(".png"):
            scaled = (img - img.min()) / (img.max() - img.min())
            imsave(folder / name, (255 * scaled).astype(np.uint8))
        else:
            np.save(folder / name, img)
    dash = HOSTILE["leading dash"]
    config = write_config(folder / "my.yaml", {"images": {"source": ["photos/*", dash]}})
    before = checkout_state()
    snakemake(folder, "-s", REPO / "Snakefile", "--configfile", config, "--cores", "1", "results/images.h5")
    with h5py.File(folder / "results" / "images.h5") as f:
        names = [f["images"][key].attrs["name"] for key in f["images"]]
        whitened = bool(f.attrs["whitened"])
    return folder, names, whitened, checkout_state() == before


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_image_name_is_read_as_an_image_and_runs_nothing(hostile_run, kind):
    folder, names, whitened, checkout_unchanged = hostile_run
    assert HOSTILE[kind] in names
    assert len(names) == len(HOSTILE)  # every file is an image, and nothing else is
    assert whitened  # "--no-whiten" in a name was not read as an option
    assert pwned(folder, REPO) == []
    assert checkout_unchanged


def test_moving_the_checkout_reruns_nothing_even_to_a_hostile_path(tmp_path):
    """The command text Snakemake keeps (its code trigger) holds no path of the checkout."""
    first, second = tmp_path / "checkout one", tmp_path / "it's $(touch PWNED-path) `touch PWNED-path2`"
    for folder in (first, second):
        folder.mkdir()
        copy_workflow(folder)
    work = tmp_path / "work"
    work.mkdir()
    for i, img in enumerate(smooth_images(2, 32)):
        np.save(work / f"img{i}.npy", img)
    config = write_config(work / "my.yaml", {"images": {"source": ["img*.npy"]}}, SMALL)
    build = ["--configfile", config, "--cores", "2", "results/filters.png"]
    snakemake(work, "-s", first / "Snakefile", *build)
    proc = snakemake(work, "-s", second / "Snakefile", *build)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    (work / "results" / "filters.png").unlink()
    proc = snakemake(work, "-s", second / "Snakefile", *build)
    assert "Finished jobid: 0 (Rule: filters)" in proc.stderr  # the moved checkout's scripts run
    assert pwned(tmp_path) == []


def test_runs_with_the_checkouts_snakefile_in_another_folder(tmp_path):
    """snakemake -s <checkout>/Snakefile --directory <tmp> --configfile <tmp>/my.yaml results/filters.png"""
    config = write_config(tmp_path / "my.yaml", SMALL)
    before = checkout_state()
    snakemake(
        REPO.parent,  # neither the checkout nor the working directory
        "-s", REPO / "Snakefile", "--directory", tmp_path, "--configfile", config,
        "--cores", "2", "results/filters.png",
    )  # fmt: skip
    assert (tmp_path / "results" / "filters.png").stat().st_size > 0
    with h5py.File(tmp_path / "results" / "model.h5") as f:
        assert f.attrs["ranks"] == 2 and f.attrs["iterations"] == SMALL["train"]["iterations"]
    assert (tmp_path / "results" / "logs" / "train.log").exists()
    assert checkout_state() == before


USER_SNAKEFILE = """\
# A user's own workflow that uses the sparse-autoencoder workflow as a module.
configfile: "my.yaml"


module sae:
    snakefile:
        {snakefile!r}
    config:
        config


use rule * from sae as sae_*


rule all:
    default_target: True
    input:
        "results/filters.png",
        rules.sae_sweep.input,
"""


def test_imported_as_a_module_by_a_users_own_snakefile(tmp_path):
    """A user's Snakefile with `module sae` and its own config builds the filters and the sweep."""
    (tmp_path / "Snakefile").write_text(USER_SNAKEFILE.format(snakefile=str(REPO / "Snakefile")))
    for i, img in enumerate(smooth_images(2, 64)):
        np.save(tmp_path / f"img{i}.npy", img)
    write_config(tmp_path / "my.yaml", {"images": {"source": ["img*.npy"]}}, SMALL, TINY_SWEEP)
    before = checkout_state()
    proc = snakemake(tmp_path, "--cores", "2", "--resources", "sweep_timing=1")
    results = tmp_path / "results"
    assert (results / "filters.png").stat().st_size > 0
    for name in ("runtimes.csv", "runtimes.md", "scaling.csv", "model.json", "speedup.png", "model.png"):
        assert (results / "sweep" / name).stat().st_size > 0, name
    sweep = TINY_SWEEP["sweep"]
    runs = len(sweep["ranks"]) * len(sweep["hidden"]) * len(sweep["sizes"]) * sweep["repeats"]
    assert len((results / "sweep" / "runtimes.csv").read_text().strip().splitlines()) == 1 + runs
    assert "rule sae_train:" in proc.stderr
    # the light rules are local under their prefixed names (a cluster runs only the heavy ones)
    assert "localrules directive specifies rules that are not present" not in proc.stderr
    assert f"sae_sweep_train_one_rank: grid point 1 of {runs}" in proc.stderr
    assert checkout_state() == before


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def https_git_host(root, cert, key):
    """A git host on 127.0.0.1 serving the bare repositories under ``root`` over HTTPS
    (git's "dumb" protocol: static files); yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=root))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def git(*args, cwd):
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=cwd)


def test_a_module_from_a_git_host_pinned_to_a_tag_runs_from_snakemakes_source_cache(tmp_path, monkeypatch):
    """`snakefile: github(REPO, path="Snakefile", tag=..., host=...)`, as snakedeploy writes it.

    This checkout's files, committed and tagged in a repository of their own, are served by
    a local HTTPS git host; Snakemake clones that into its source cache and runs the
    workflow from there, with every script and package module it needs. The repository is
    built here, so the checkout need not be one (a tree unpacked from `git archive` works).
    """
    for tool in ("git", "openssl"):
        if shutil.which(tool) is None:
            unavailable(f"no {tool} on this machine", "the git-host test")
    source = tmp_path / "source"
    git("init", "-q", source, cwd=tmp_path)
    # The checkout's files as `git add -A` sees them (its .gitignore applies, and a Python
    # environment created inside it under any name is left out), each file's working-tree
    # version; the new repository's index and objects stay in source/.git.
    excluded = "".join(f"/{name}/\n" for name in sorted(environments_in_checkout()))
    (source / ".git" / "info" / "exclude").write_text(excluded)
    in_source = ["--git-dir", source / ".git", "--work-tree", REPO]
    git(*in_source, "add", "-A", cwd=tmp_path)
    git(*in_source, "commit", "-q", "-m", "the workflow", cwd=tmp_path)
    git(*in_source, "tag", "v1.0", cwd=tmp_path)
    assert "Snakefile" in git(*in_source, "ls-files", cwd=tmp_path).stdout.split()
    hosted = tmp_path / "host" / "lab" / "sae-workflow"
    git("clone", "-q", "--bare", source, hosted, cwd=tmp_path)
    git("update-server-info", cwd=hosted)
    cert, key = tmp_path / "host.pem", tmp_path / "host.key"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert])  # fmt: skip
    monkeypatch.setenv("GIT_SSL_CAINFO", str(cert))  # git trusts the host's certificate, nothing else
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # Snakemake's source cache
    user = tmp_path / "analysis"
    user.mkdir()
    for i, img in enumerate(smooth_images(2, 64)):
        np.save(user / f"img{i}.npy", img)
    write_config(user / "my.yaml", {"images": {"source": ["img*.npy"]}}, SMALL)
    before = checkout_state()
    with https_git_host(tmp_path / "host", cert, key) as port:
        snakefile = f'github("lab/sae-workflow", path="Snakefile", tag="v1.0", host="127.0.0.1:{port}")'
        (user / "Snakefile").write_text(
            USER_SNAKEFILE.replace("{snakefile!r}", snakefile).replace("        rules.sae_sweep.input,\n", "")
        )
        proc = snakemake(user, "--cores", "2")
    assert f"Cloning 127.0.0.1:{port}/lab/sae-workflow" in proc.stderr
    assert "localrules directive specifies rules that are not present" not in proc.stderr
    assert (user / "results" / "filters.png").stat().st_size > 0
    with h5py.File(user / "results" / "model.h5") as f:
        assert f.attrs["ranks"] == 2 and f.attrs["iterations"] == SMALL["train"]["iterations"]
    assert (user / "results" / "logs" / "train.log").exists()
    assert str(REPO) not in (user / "results" / "logs" / "train.log").read_text()
    assert checkout_state() == before


def test_image_names_with_braces_are_a_one_line_error(tmp_path):
    """Snakemake reads braces in a path as a wildcard: such a name is refused, naming the file."""
    for name in ("ok.npy", "a{b}.npy"):
        np.save(tmp_path / name, smooth_images(1, 32)[0])
    config = write_config(tmp_path / "my.yaml", {"images": {"source": ["*.npy"]}})
    proc = snakemake(tmp_path, "-s", REPO / "Snakefile", "--configfile", config, "-n", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and errors == [
        "error: config images.source: 'a{b}.npy': rename it, without { or }"
    ]


# --- The workflow's standard files -------------------------------------------------------------


def schema_defaults(schema, prefix=""):
    """{dotted key: default} of every leaf key of the config schema."""
    leaves = {}
    for name, sub in schema["properties"].items():
        if sub.get("type") == "object":
            leaves.update(schema_defaults(sub, f"{prefix}{name}."))
        else:
            leaves[prefix + name] = sub["default"]
    return leaves


def test_config_guide_lists_every_schema_key_with_its_default():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    defaults = schema_defaults(schema)
    guide = (REPO / "config" / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", guide, re.M)
    documented = {key: yaml.safe_load(default) for key, default in rows}
    assert documented == defaults
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    flat = {f"{section}.{key}": value for section, keys in shipped.items() for key, value in keys.items()}
    assert flat == defaults  # the shipped config is the defaults, written out


def test_readme_links_to_the_config_guide_instead_of_repeating_it():
    readme = (REPO / "README.md").read_text()
    assert "(config/README.md)" in readme
    assert not re.search(r"^\| `train\.", readme, re.M)


def requirement_specs(text):
    """{name: specifier} of requirements.txt-style lines (comments and blank lines skipped)."""
    specs = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
            specs[name.lower()] = spec.replace(" ", "")
    return specs


# What Snakemake itself needs, not the rules' software (jsonschema: config validation at load).
WORKFLOW_RUNNER = {"snakemake", "snakemake-executor-plugin-slurm", "jsonschema"}
CONDA_NAMES = {"matplotlib-base": "matplotlib"}  # conda-forge's name: PyPI's name


def test_conda_env_keeps_in_step_with_requirements():
    """workflow/envs/sae.yaml: the same packages as requirements.txt's runtime part, same ranges."""
    text = (REPO / "requirements.txt").read_text()
    runtime = requirement_specs(text.split("# Tests and checks.")[0])
    env = yaml.safe_load((REPO / "workflow" / "envs" / "sae.yaml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = requirement_specs("\n".join(env["dependencies"]))
    python = conda.pop("python")
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in SpecifierSet(python)
    conda = {CONDA_NAMES.get(name, name): spec for name, spec in conda.items()}
    assert conda == {name: spec for name, spec in runtime.items() if name not in WORKFLOW_RUNNER}
    assert WORKFLOW_RUNNER <= set(runtime)


def test_slurm_plugin_is_pinned_to_the_tested_minor_version():
    specs = requirement_specs((REPO / "requirements.txt").read_text())
    spec = SpecifierSet(specs["snakemake-executor-plugin-slurm"])
    assert importlib.metadata.version("snakemake-executor-plugin-slurm") in spec
    assert "2.0.0" not in spec and "3.0.0" not in spec  # slurm-status-command needs >= 2.0.1


def test_scripts_the_workflow_copies_are_every_script_and_package_module():
    """common.smk lists the files Snakemake's source cache copies (a module from a git host needs them)."""
    tree = ast.parse((REPO / "workflow" / "rules" / "common.smk").read_text())
    lists = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("ENTRY_SCRIPTS", "PACKAGE_MODULES")
    }  # fmt: skip
    scripts = REPO / "workflow" / "scripts"
    assert sorted(lists["ENTRY_SCRIPTS"]) == sorted(p.name for p in scripts.glob("*.py"))
    package = scripts / "sae"  # with its subpackage sae/sweep/
    assert sorted(lists["PACKAGE_MODULES"]) == sorted(
        p.relative_to(package).as_posix() for p in package.rglob("*.py")
    )


def test_catalog_usage_file():
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["mandatory-flags"]) == {"desc", "flags"}
    assert set(usage["software-stack-deployment"]) == {"conda", "apptainer", "apptainer+conda"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
