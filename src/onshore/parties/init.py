"""Making party folders: one per site and one for the coordinator, from a project example.

``onshore init DIR --example three-regions --parties`` makes ``DIR/cn-shanghai``,
``DIR/eu-frankfurt``, ``DIR/us-oregon`` and ``DIR/coordinator``, each with its own
``onshore.toml``, store, catalogue and keystore (ledger key, HMAC secret, TLS key and
certificate, and for a site its SuperNode key), and adds every party's public identity to every
other's ``peers/``: what operators of four data centres would do by exchanging identity files,
done at once on one machine. ``--party ID`` makes one party's folder only (each data centre
makes its own; then they exchange identities with ``onshore party identity`` and
``onshore party trust``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from onshore.errors import ConfigError, ProjectExists
from onshore.files import write_atomically
from onshore.parties.identity import export_identity, trust_peer
from onshore.parties.tls import make_node_key, make_tls
from onshore.settings import CONFIG_NAME, Project, Settings, load_project, parse_settings
from onshore.sites import EXAMPLES
from onshore.sites.keystore import create_keystore

__all__ = ["Address", "init_parties", "parse_address", "render_config"]

_BASE_PORT: Final = 8441
_FLEET_PORT: Final = 9092
_LOCAL_NAMES: Final = ("localhost", "127.0.0.1")


@dataclass(frozen=True, slots=True)
class Address:
    """Where a party's service is reached: a host name or address, and a port."""

    host: str
    port: int

    @property
    def listen(self) -> str:
        """Where the service listens: the address itself, or every address for a name."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return "0.0.0.0"
        return self.host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def parse_address(text: str, *, option: str = "--address") -> tuple[str, Address]:
    """``PARTY=HOST[:PORT]`` as (party, address); raises :class:`ConfigError`."""
    party, sep, rest = text.partition("=")
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?(?::(\d{1,5}))?", rest.strip()) if sep else None
    if not party or match is None:
        raise ConfigError(
            f"{option} {text!r} is not PARTY=HOST[:PORT]",
            hint="e.g. cn-shanghai=10.0.0.1:8443 or coordinator=coord.example.com",
        )
    port = int(match.group(2)) if match.group(2) else 0
    if match.group(2) and not 1 <= port <= 65535:
        raise ConfigError(f"{option} {text!r}: port {port} is not 1-65535")
    return party.strip(), Address(match.group(1), port)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        import orjson

        return orjson.dumps(value).decode().replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _section(name: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"]
    tables = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and key == "responsible_person":
            tables.append((f"{name}.{key}", value))
            continue
        lines.append(f"{key} = {_toml(value)}")
    text = "\n".join(lines) + "\n"
    for sub, body in tables:
        text += "\n" + _section(sub, body)
    return text


def render_config(
    settings: Settings, party: str, address: Address, *, federation: str | None = None
) -> str:
    """The ``onshore.toml`` of ``party`` (a site of ``settings``, or its coordinator) in a folder
    of its own: its own site or coordinator section only, with its store, catalogue and keystore
    inside the folder."""
    own = {"store": "store", "catalogue": "sqlite:///store/catalogue.sqlite", "keystore": "keys"}
    party_section: dict[str, Any] = {
        "id": party,
        "host": address.listen,
        "port": address.port,
        "endpoint": address.url,
    }
    coordinator = settings.coordinator
    text = (
        f"# An onshore party: {party} of project {settings.name!r}, in a folder of its own.\n"
        "# Its peers' public identities are under peers/; nothing here is another party's\n"
        "# secret. Run its service with: onshore serve\n\n"
        + _section("project", {"name": settings.name})
        + "\n"
    )
    if party == coordinator.id:
        if federation:
            party_section["federation"] = federation
        text += _section("party", party_section) + "\n"
        body = coordinator.model_dump(mode="json", exclude={"id", "store", "catalogue", "keystore"})
        text += _section("coordinator", {**body, **own})
    else:
        site = settings.sites[party]
        text += _section("party", party_section) + "\n"
        body = site.model_dump(
            mode="json", exclude={"id", "store", "catalogue", "keystore"}, exclude_none=True
        )
        head: dict[str, Any] = {
            k: body.pop(k) for k in ("jurisdiction", "entity", "country") if k in body
        }
        text += _section(f"sites.{party}", {**head, **own, **body})
    if settings.rulebooks.overrides or settings.rulebooks.extra:
        text += "\n" + _section("rulebooks", settings.rulebooks.model_dump(mode="json"))
    return text


def _example(example: str) -> Settings:
    if example not in EXAMPLES:
        raise ConfigError(
            f"unknown example {example!r}", hint=f"known examples: {', '.join(EXAMPLES)}"
        )
    return parse_settings(EXAMPLES[example], Path(f"<example {example}>"))


def init_parties(
    folder: Path,
    example: str = "three-regions",
    *,
    only: str | None = None,
    addresses: Mapping[str, Address] | None = None,
    federation: str | None = None,
    names: Sequence[str] = (),
) -> dict[str, Project]:
    """Make the parties of ``example`` under ``folder`` (see the module's description); only
    ``only`` when given. ``addresses``: where each party is reached (default: loopback, ports
    8441 upwards); ``federation``: the coordinator's SuperLink as sites reach it; ``names``:
    more names or addresses every certificate should cover. Returns each party's project.
    Raises :class:`ProjectExists` rather than overwrite a party's folder."""
    settings = _example(example)
    parties = [*settings.sites, settings.coordinator.id]
    if only is not None and only not in parties:
        raise ConfigError(
            f"example {example!r} has no party {only!r}", hint=f"its parties: {', '.join(parties)}"
        )
    addresses = dict(addresses or {})
    unknown = sorted(set(addresses) - set(parties))
    if unknown:
        raise ConfigError(
            f"--address names {', '.join(unknown)}, which {example!r} does not have",
            hint=f"its parties: {', '.join(parties)}",
        )
    chosen = [only] if only is not None else parties
    for party in chosen:
        if (folder / party / CONFIG_NAME).exists():
            raise ProjectExists(
                f"{folder / party / CONFIG_NAME} already exists",
                hint="choose another folder, or use the parties you have",
            )
    made: dict[str, Project] = {}
    for index, party in enumerate(parties):
        if party not in chosen:
            continue
        address = addresses.get(party) or Address("127.0.0.1", _BASE_PORT + index)
        if address.port == 0:
            address = Address(address.host, _BASE_PORT + index)
        link = None
        if party == settings.coordinator.id:
            link = federation or f"{_bracket(address.host)}:{_FLEET_PORT}"
        home = folder / party
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(
            home / CONFIG_NAME,
            render_config(settings, party, address, federation=link).encode(),
        )
        project = load_project(home)
        keys = home / "keys"
        create_keystore(keys)
        hosts = [address.host, *names, *_LOCAL_NAMES]
        if link is not None:
            hosts.append(link.rsplit(":", 1)[0].strip("[]"))
        make_tls(keys, party, hosts)
        if party != settings.coordinator.id:
            make_node_key(keys)
        (home / "store").mkdir(exist_ok=True)
        made[party] = project
    if only is None:
        identities = {party: export_identity(project) for party, project in made.items()}
        import orjson

        for party, project in made.items():
            for other, identity in identities.items():
                if other != party:
                    trust_peer(project, orjson.dumps(identity, option=orjson.OPT_INDENT_2))
    return made


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
