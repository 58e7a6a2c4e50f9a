"""The docs as a user reads them: every relative link resolves, every shell command works.

Pages: README.md, config/README.md and docs/*.md, in the reading order of PAGES.

Commands are the lines of ```bash, ```sh, ```shell and ```console blocks (in console blocks,
the lines after "$ "); a line ending in "\\" continues on the next, and a line that is only a
comment is not a command. Each command is one of:

- cluster-only: its comment starts with "# cluster-only" (it needs a Slurm cluster, or more
  cores than a test has). A Snakemake command is dry-run as written, profile included, with
  `-n --forceall` (every job of its targets): a dry run with `--profile slurm` reads the
  profile and computes every job's resources and threads without Slurm (Snakemake runs a dry
  run on its own dry-run executor, whatever the profile's `executor:`). Any other command is
  checked for syntax with `bash -n`. These checks run beside the runs below, in a clone of
  their own with every file the docs show, and commands that differ only in their targets
  share one dry run (Snakemake's own parser tells targets from options).
- not run: every part of it (between "&&") starts with a prefix in NOT_RUN, which says why.
- run: anything else, for real, in a fresh copy of the repository, in reading order, as a user
  following the docs would. Parts in NOT_RUN are left out (the install before a command). A
  command run already, with the same contents of the files it names, is not run again.

What a run changes, visibly (see `runnable`):
- a Snakemake command that executes the workflow gets the test's small config (SMALL: 2,000
  patches, 30 iterations; a sweep of 1 and 2 ranks, one size, 5 iterations) after its own
  config files, since documented sizes take minutes; dry runs, reports and lint run as written;
- `tail -f FILE` becomes `tail -n 5 FILE` (it would follow the file forever);
- "/path/to/clone" is the copy of the repository.

Files the docs show a user writing are written as the reader meets them: a fenced block whose
first line is a comment naming a file ("# my.yaml", "# my-analysis/Snakefile: ...") is written
to that path in the copy; "~/.config/" is a temporary XDG_CONFIG_HOME, where Snakemake looks
for profiles. Before the first command, resources/images/ gets two small photographs (a PNG and
a JPEG), since the docs show a folder of one's own photographs there.
"""

import re
import shlex
import shutil
import subprocess
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import (
    REPO,
    env,
    environments_in_checkout,
    job_counts,
    load_config,
    smooth_images,
    write_config,
)

PAGES = [
    "README.md",
    "config/README.md",
    "docs/running.md",
    "docs/module.md",
    "docs/large-data.md",
    "docs/scaling.md",
    "docs/performance.md",
    "docs/design.md",
    "docs/reliability.md",
    "docs/troubleshooting.md",
    "docs/cluster.md",
    "docs/development.md",
]
README_MAX_LINES = 250

SHELL = {"bash", "sh", "shell", "console"}
NOT_SHELL = {"text", "yaml", "python"}  # output, files and code: every fenced block is one of these
CLUSTER_ONLY = "# cluster-only"
NOT_RUN = {  # command prefix: why the test does not run it
    "python -m pip install": "installs packages; .ci/run runs the README's install command first",
    "python -m pytest": "the test suite itself, which this test is part of",
    "snakedeploy deploy-workflow": "needs a real git host; tests/test_deploy.py runs the module it writes",
}
# The test's small config: added to every Snakemake run of the workflow (see the docstring).
SMALL = [
    load_config("small"),
    {"sweep": {"ranks": [1, 2], "hidden": [25], "sizes": [10000], "repeats": 1, "iterations": 5}},
]
CLONE_PLACEHOLDER = "/path/to/clone"
FILE_COMMENT = re.compile(r"#\s+(?P<path>[\w.~/-]*(?:\.ya?ml|Snakefile))(?::.*)?$")


def fenced_blocks(text: str):
    """(info string, first line number, lines) of every fenced code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*(\S*)", lines[i])
        if m:
            indent, fence, info = m.groups()
            body, j = [], i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence):
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            blocks.append((info, i + 2, body))
            i = j
        i += 1
    return blocks


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code (where links are links)."""
    return re.sub(r"(`+).+?\1", "", "\n".join(prose_lines(text)))


def prose_lines(text: str):
    """The lines outside fenced blocks."""
    inside = None
    for line in text.splitlines():
        fence = re.match(r"^\s*(```+|~~~+)", line)
        if fence:
            inside = None if inside and line.strip().startswith(inside) else (inside or fence[1])
            continue
        if not inside:
            yield line


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's code and its comment (a # that starts a word, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip(), line[k:]
    return line.rstrip(), ""


def commands(page: str):
    """(line number, command, comment) of every shell command of a page, in order."""
    found = []
    for info, first, body in fenced_blocks((REPO / page).read_text()):
        if info not in SHELL:
            continue
        pending, start = "", None
        for offset, raw in enumerate(body):
            line = raw
            if info == "console":
                if not line.startswith("$ ") and not pending:
                    continue  # output
                line = line.removeprefix("$ ")
            code, comment = split_comment(line)
            if not code and not pending:
                continue  # a comment line, or blank
            start = first + offset if start is None else start
            if code.endswith("\\"):
                pending += code[:-1] + " "
                continue
            found.append((start, pending + code, comment))
            pending, start = "", None
    return found


def file_blocks(page: str):
    """(line number, path, content) of every block that shows a file, by its first-line comment."""
    out = []
    for info, first, body in fenced_blocks((REPO / page).read_text()):
        m = FILE_COMMENT.match(body[0]) if info in NOT_SHELL and body else None
        if m:
            out.append((first, m["path"], "\n".join(body) + "\n"))
    return out


def not_run_reason(part: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if part.strip().startswith(prefix)), None)


def snakemake_args(part: str) -> list[str] | None:
    """The arguments after `snakemake` (after any VAR=value), or None for another command."""
    words = shlex.split(part)
    while words and re.match(r"^\w+=", words[0]):
        words = words[1:]
    return words[1:] if words and words[0] == "snakemake" else None


def with_small_config(args: list[str], small: Path) -> list[str]:
    """``args`` with ``small`` as the last config file: after the files of their --configfile,
    or as a --configfile of its own."""
    for k in range(len(args) - 1, -1, -1):
        if args[k] in ("--configfile", "--configfiles"):
            end = k + 1
            while end < len(args) and not args[end].startswith("-"):
                end += 1
            return [*args[:end], str(small), *args[end:]]
    return [*args, "--configfile", str(small)]


def executes(args: list[str]) -> bool:
    """Whether a Snakemake command runs the workflow (not a dry run, a report or a lint)."""
    return not any(a in ("-n", "--dry-run", "--dryrun", "--lint", "--report") for a in args)


def runnable(command: str, clone: Path, small: Path) -> str:
    """The command as the test runs it (see the module docstring): NOT_RUN parts left out."""
    parts = []
    for part in command.replace(CLONE_PLACEHOLDER, str(clone)).split("&&"):
        if not_run_reason(part):
            continue
        args = snakemake_args(part)
        if args is not None and executes(args):
            prefix = part[: part.index("snakemake")]
            part = prefix + "snakemake " + shlex.join(with_small_config(args, small))
        part = re.sub(r"\btail -f\b", "tail -n 5", part)
        parts.append(part.strip())
    return " && ".join(parts)


def working_dir(command: str, clone: Path) -> Path:
    """Where a command's relative paths point: `cd DIR &&` or Snakemake's --directory DIR."""
    folder = clone
    m = re.match(r"\s*cd\s+(\S+)\s*&&", command)
    if m:
        folder = folder / m[1]
    words = shlex.split(command)
    if "--directory" in words:
        folder = folder / words[words.index("--directory") + 1]
    return folder


def fresh_clone(folder: Path) -> Path:
    """The repository as a fresh clone has it, in folder/clone: without .git and what runs leave
    behind."""
    clone = folder / "clone"
    left_behind = shutil.ignore_patterns(
        ".git", "results", ".snakemake", "__pycache__", ".venv", ".pytest_cache", ".ruff_cache"
    )
    environments = environments_in_checkout()

    def ignore(path, names):
        top = environments.intersection(names) if Path(path) == REPO else set()
        return left_behind(path, names) | top

    shutil.copytree(REPO, clone, ignore=ignore)
    return clone


def shell(command: str, cwd: Path, extra_env: dict, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env={**env(), **extra_env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_file(clone: Path, config_home: Path, path: str, content: str) -> None:
    if path.startswith("~/.config/"):
        target = config_home / path.removeprefix("~/.config/")
    else:
        assert not path.startswith(("~", "/")), f"a file shown in the docs outside the clone: {path}"
        target = clone / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content.replace(CLONE_PLACEHOLDER, str(clone)))


def add_photographs(clone: Path) -> None:
    """Two small photographs of one's own, a PNG and a JPEG (the docs name both kinds)."""
    folder = clone / "resources" / "images"
    for img, name in zip(smooth_images(count=2, size=96), ("garden.png", "street.jpg"), strict=True):
        pixels = np.clip(128 + 400 * img, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)


# --- links ----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation and symbols dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link: its text
    kept = "".join(
        ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM"
    )  # letters, numbers, marks
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def relative_links(page: str) -> list[str]:
    text = prose((REPO / page).read_text())
    targets = LINK.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # not http:, mailto:


def test_the_pages_are_the_docs_folder_in_a_reading_order():
    docs = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert docs == {p for p in PAGES if p.startswith("docs/")}, "add a new page to PAGES"
    assert len(PAGES) == len(set(PAGES))


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_and_image_resolves(page):
    links = relative_links(page)
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        file = (REPO / page).parent / path if path else REPO / page
        if not file.resolve().exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_links_are_found_and_a_broken_one_is_caught(tmp_path):
    """The link check's own parts: it sees links and images, and rejects a missing anchor."""
    assert slug("A job pending with `PartitionConfig`") == "a-job-pending-with-partitionconfig"
    assert slug("A YAML traceback: the `--configfile` argument order") == (
        "a-yaml-traceback-the---configfile-argument-order"
    )
    assert slug("Processes \u00d7 sizes, 2 ranks' time_s") == "processes--sizes-2-ranks-time_s"
    assert "docs/filters.png" in relative_links("README.md")
    assert "docs/cluster.md" in relative_links("README.md")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Twice\n\n## Twice\n\n```bash\n# Not a heading\n```\n")
    assert anchors(page) == {"title", "twice", "twice-1"}


def test_readme_is_a_front_page_of_at_most_250_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move details to docs/"


# --- commands -------------------------------------------------------------------------------


def test_every_fenced_block_says_what_it_holds():
    """A block without a known info string could hide a command from the test below."""
    unknown = [
        f"{page}:{first} ```{info}"
        for page in PAGES
        for info, first, _ in fenced_blocks((REPO / page).read_text())
        if info not in SHELL | NOT_SHELL
    ]
    assert not unknown, "use bash for commands, text for output, yaml or python for files: " + ", ".join(
        unknown
    )


def test_commands_are_read_as_written():
    """The command reader's own parts, on the forms the docs use."""
    assert split_comment("snakemake --profile slurm sweep  # cluster-only: a grid") == (
        "snakemake --profile slurm sweep",
        "# cluster-only: a grid",
    )
    assert split_comment("echo '#not' a#b") == ("echo '#not' a#b", "")
    small = Path("/s.yaml")
    clone = Path("/c")
    assert runnable("python -m pip install -r requirements.txt && snakemake --cores 16", clone, small) == (
        "snakemake --cores 16 --configfile /s.yaml"
    )
    assert runnable("snakemake --cores 16 t --configfile a.yaml b.yaml --set-threads x=1", clone, small) == (
        "snakemake --cores 16 t --configfile a.yaml b.yaml /s.yaml --set-threads x=1"
    )
    assert runnable("snakemake --report results/report.html", clone, small) == (
        "snakemake --report results/report.html"
    )
    assert runnable("tail -f results/logs/train.log", clone, small) == "tail -n 5 results/logs/train.log"
    assert runnable("snakemake -s /path/to/clone/Snakefile --cores 1", clone, small) == (
        "snakemake -s /c/Snakefile --cores 1 --configfile /s.yaml"
    )
    assert runnable("python -m pip install -r requirements.txt && python -m pytest", clone, small) == ""
    assert working_dir("cd my-analysis && snakemake --cores 1", clone) == clone / "my-analysis"
    assert working_dir("snakemake --directory my-analysis --cores 1", clone) == clone / "my-analysis"


def every_command():
    """(page, line, command, comment) of every page's commands, in reading order."""
    return [(page, line, cmd, comment) for page in PAGES for line, cmd, comment in commands(page)]


def test_the_docs_have_commands_of_each_kind():
    """The commands below are found: runnable ones, cluster-only ones and ones not run."""
    found = every_command()
    main_job = "python -m pip install -r requirements.txt && snakemake --cores 16"
    assert any(command == main_job for _, _, command, _ in found)
    assert sum(comment.startswith(CLUSTER_ONLY) for *_, comment in found) >= 3
    assert any(not_run_reason(c) for _, _, c, _ in found)


def dry_runs(cluster_only: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(doc places, command) of the checks of cluster-only commands ((place, command) each): a
    dry run of every group of Snakemake commands that differ only in their targets, with the
    targets of all, or `bash -n` of another command."""
    from snakemake.cli import get_argument_parser  # its import takes a second: only here

    parser = get_argument_parser()
    groups: dict[tuple, tuple[list[str], list[str]]] = {}
    checks = []
    for place, command in cluster_only:
        args = snakemake_args(command)
        if args is None:
            checks.append(([place], f"bash -n -c {shlex.quote(command)}"))
            continue
        env_prefix = command[: command.index("snakemake")]
        try:
            targets = parser.parse_args(args).targets
        except SystemExit:  # not Snakemake's arguments: its own dry run says which
            checks.append(([place], f"{command} -n"))
            continue
        options = tuple(a for a in args if a not in targets)
        places, all_targets = groups.setdefault((env_prefix, options), ([], []))
        places.append(place)
        all_targets += [t for t in targets if t not in all_targets]
    for (env_prefix, options), (places, targets) in groups.items():
        checks.append((places, f"{env_prefix}snakemake {shlex.join([*targets, *options])} -n --forceall"))
    return checks


def check_run(command: str, clone: Path, small: Path, extra_env: dict) -> str | None:
    """Run a command for real; an error, or None once it succeeded and made what it names."""
    actual = runnable(command, clone, small)
    if not actual:
        return None
    proc = shell(actual, clone, extra_env)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return f"`{actual}` failed ({proc.returncode}):\n{output[-4000:]}"
    if actual.startswith("tail ") and not proc.stdout.strip():
        return f"`{actual}` printed nothing"
    args = snakemake_args(actual.split("&&")[-1])
    if args is not None and (executes(args) or "--report" in args):
        folder = working_dir(actual, clone)
        for word in args:
            if word.startswith("results/") and not (folder / word).exists():
                return f"`{actual}` made no {word}:\n{output[-2000:]}"
    return None


def reading():
    """(place, kind, what, detail) of every page's files ("file", path, content) and commands
    ("command", command, comment), in reading order."""
    for page in PAGES:
        steps = [(line, "file", path, content) for line, path, content in file_blocks(page)]
        steps += [(line, "command", cmd, comment) for line, cmd, comment in commands(page)]
        for line, kind, what, detail in sorted(steps, key=lambda step: step[0]):
            yield f"{page}:{line}", kind, what, detail


def named_files(command: str, clone: Path) -> tuple:
    """(name, contents) of the files a command's words name, as they are now."""
    folder = working_dir(command, clone)
    words = shlex.split(command.replace(CLONE_PLACEHOLDER, str(clone)))
    return tuple((w, (folder / w).read_bytes()) for w in words if (folder / w).is_file())


def check_cluster_only(folder: Path) -> list[str]:
    """The cluster-only commands' checks, in a clone of their own holding every file the docs
    show (the last version of each); the failures."""
    clone = fresh_clone(folder)
    add_photographs(clone)
    extra_env = {"XDG_CONFIG_HOME": str(folder / "config-home")}
    cluster_only = []
    for place, kind, what, detail in reading():
        if kind == "file":
            write_file(clone, folder / "config-home", what, detail)
        elif detail.startswith(CLUSTER_ONLY):
            cluster_only.append((place, what))
    failures = []
    for places, check in dry_runs(cluster_only):
        proc = shell(check, clone, extra_env)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            failures.append(f"{', '.join(places)}: `{check}` failed:\n{output[-4000:]}")
        elif not check.startswith("bash -n") and not job_counts(output):
            failures.append(f"{', '.join(places)}: `{check}` lists no jobs:\n{output[-2000:]}")
    return failures


def test_every_command_in_the_docs_works(tmp_path):
    """Read the pages in order in a fresh clone: write the files they show, run their commands.
    The cluster-only commands are checked meanwhile, beside it (Snakemake's start-up is most of
    a dry run's time, one core's work)."""
    (tmp_path / "local").mkdir()
    (tmp_path / "cluster").mkdir()
    clone = fresh_clone(tmp_path / "local")
    small = write_config(tmp_path / "docs-small.yaml", *SMALL)
    config_home = tmp_path / "local" / "config-home"
    extra_env = {"XDG_CONFIG_HOME": str(config_home)}
    add_photographs(clone)
    failures, done = [], set()
    with ThreadPoolExecutor(1) as pool:
        cluster = pool.submit(check_cluster_only, tmp_path / "cluster")
        for place, kind, what, detail in reading():
            if kind == "file":
                write_file(clone, config_home, what, detail)
            elif not detail.startswith(CLUSTER_ONLY):
                key = (what, named_files(what, clone))
                if key in done:
                    continue  # run already, with the same files: nothing new to see
                done.add(key)
                error = check_run(what, clone, small, extra_env)
                if error:
                    failures.append(f"{place}: {what}\n{error}")
        failures += cluster.result()
    assert not failures, "\n\n".join(failures)
