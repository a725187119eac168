"""The operator's own settings, `~/.claude-bottle/config.toml` (CLAUDE_BOTTLE_HOME): never a project's
manifest, which is content an agent's repository may carry. Today: where word of a bottle goes.

    [notify]
    desktop = true                     # default: when this machine has a desktop session

    [[notify.webhooks]]
    url = "https://hooks.example.com/claude-bottle"
    secret = "env:CLAUDE_BOTTLE_HOOK_SECRET"   # or "file:~/.config/hook.secret": signs every event
    events = ["waiting", "crashed", "finished"] # default: all
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from shutil import which
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from claude_bottle.bottle.state import bottle_home
from claude_bottle.errors import BottleError

Event = Literal["waiting", "crashed", "finished"]
EVENTS: tuple[Event, ...] = ("waiting", "crashed", "finished")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Webhook(_Strict):
    url: str
    secret: str = Field(pattern=r"^(env|file):.+$")
    events: tuple[Event, ...] = EVENTS

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    def read_secret(self) -> bytes:
        kind, _, where = self.secret.partition(":")
        if kind == "env":
            value = os.environ.get(where, "")
            if not value:
                raise BottleError(f"webhook {self.url}: its secret's variable {where} is unset or empty")
            return value.encode()
        try:
            value = Path(where).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BottleError(f"webhook {self.url}: its secret file {where}: {exc.strerror}") from None
        if not value:
            raise BottleError(f"webhook {self.url}: its secret file {where} is empty")
        return value.encode()


class Notify(_Strict):
    desktop: bool | None = None  # None: when a desktop session is there
    webhooks: tuple[Webhook, ...] = ()


class Settings(_Strict):
    notify: Notify = Field(default_factory=Notify)

    @property
    def desktop(self) -> bool:
        if self.notify.desktop is not None:
            return self.notify.desktop
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and bool(which("notify-send"))

    @property
    def wants_word(self) -> bool:
        """Does anyone want to hear of this machine's bottles (is a watcher worth running)?"""
        return bool(self.notify.webhooks) or self.desktop


def settings_path() -> Path:
    return bottle_home() / "config.toml"


def load(path: Path | None = None) -> Settings:
    """The settings, or the defaults when there is no file; a bad one is one line naming it."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise BottleError(f"{path}: {exc.strerror}") from None
    try:
        return Settings.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise BottleError(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BottleError(f"{path}: {where}: {first['msg']}") from None
