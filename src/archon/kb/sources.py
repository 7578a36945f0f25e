"""The sources file: which Git repositories and local folders the knowledge base reads."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from archon.errors import ConfigError

DEFAULT_INCLUDE = [".kiro/docs/**/*.md", "docs/**/*.md", "README.md"]
_GIT_URL = re.compile(r"^(https://|ssh://|git@[\w.-]+:)")
# Group names travel in headers, labels and log lines: keep them plain (the key names' rule).
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")
    git: str | None = None
    path: str | None = None
    branch: str = "main"
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=list)
    url_template: str | None = Field(
        None, description="Browsable URL of a file: {path}, {commit}, {branch}, {line}."
    )
    # Who may read the source's chunks (archon.kb.access): keys of any of these groups; none =
    # every key. Read at query time from this file, so changing it needs no re-index.
    groups: list[str] = Field(default_factory=list)

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: list[str]) -> list[str]:
        for group in value:
            if not GROUP_NAME.match(group):
                raise ValueError(f"group {group!r}: letters, digits, '_', '.', '-' (at most 64)")
        return value

    @field_validator("git")
    @classmethod
    def _git_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if _GIT_URL.match(value) or Path(value).expanduser().is_absolute():
            return value
        raise ValueError("only https://, ssh://, git@host: URLs and absolute local paths")

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if (self.git is None) == (self.path is None):
            raise ValueError("give exactly one of 'git' (a repository) or 'path' (a folder)")
        return self

    def browse_url(self, path: str, commit: str, line: int) -> str | None:
        template = self.url_template
        if template is None and self.git and self.git.startswith("https://github.com/"):
            base = self.git.removesuffix(".git")
            template = base + "/blob/{commit}/{path}#L{line}"
        if template is None:
            return None
        return template.format(path=path, commit=commit, branch=self.branch, line=line)

    def selects(self, path: str) -> bool:
        def match(pattern: str) -> bool:
            # "docs/**/*.md" also matches "docs/x.md" (** may be empty), as in gitignore.
            return fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(
                path, pattern.replace("**/", "")
            )

        return any(match(p) for p in self.include) and not any(match(p) for p in self.exclude)


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[Source]

    @model_validator(mode="after")
    def _unique(self) -> SourcesFile:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError("source names must be unique")
        return self


def load_sources(path: Path) -> list[Source]:
    try:
        doc = yaml.safe_load(path.read_text())
        return SourcesFile.model_validate(doc).sources
    except FileNotFoundError:
        raise ConfigError(f"sources file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"sources file {path}: not valid YAML ({exc})".replace("\n", " ")
        ) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"sources file {path}: {where}: {err['msg']}") from None


@dataclass
class Checkout:
    root: Path
    commit: str
    files: list[str] = field(default_factory=list)


class SourceError(Exception):
    """One source could not be read; the others still sync."""


def _git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"},
    )
    if result.returncode != 0:
        raise SourceError(
            result.stderr.strip().splitlines()[-1]
            if result.stderr.strip()
            else f"git {args[0]} failed"
        )
    return result.stdout.strip()


def checkout(source: Source, cache: Path) -> Checkout:
    """Fetch the source (shallow, one branch) and list the files it selects."""
    if source.path is not None:
        root = Path(source.path).expanduser()
        if not root.is_dir():
            raise SourceError(f"folder {root} does not exist")
        commit = "local"
    else:
        assert source.git is not None
        root = cache / source.name
        if not (root / ".git").is_dir():
            root.parent.mkdir(parents=True, exist_ok=True)
            _git(
                "clone",
                "--quiet",
                "--depth",
                "1",
                "--single-branch",
                "--branch",
                source.branch,
                source.git,
                str(root),
            )
        else:
            _git("fetch", "--quiet", "--depth", "1", "origin", source.branch, cwd=root)
            _git("checkout", "--quiet", "--force", "FETCH_HEAD", cwd=root)
            _git("clean", "-fdq", cwd=root)
        commit = _git("rev-parse", "HEAD", cwd=root)
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
        and ".git" not in p.relative_to(root).parts
        and source.selects(str(p.relative_to(root)))
    )
    return Checkout(root, commit, files)
