"""Typed settings: ``onshore.toml`` parsed into documented objects.

A project is a folder holding ``onshore.toml``. Relative paths in it are relative to that folder.
Secrets are never in this file: each site's keys live in its keystore (see
:mod:`onshore.sites.keystore`), and this file only says where that keystore is.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from onshore.errors import ConfigError, ProjectNotFound, SiteNotFound

__all__ = [
    "CONFIG_NAME",
    "ComputeProfile",
    "CoordinatorSettings",
    "FleetSettings",
    "IngestSettings",
    "MessageMapping",
    "PartySettings",
    "PrivacySettings",
    "Project",
    "ResponsiblePerson",
    "RetentionSettings",
    "RulebookSettings",
    "Settings",
    "SiteSettings",
    "UploadRole",
    "find_project",
    "load_project",
    "parse_settings",
    "redact_url",
]

CONFIG_NAME: Final = "onshore.toml"

Jurisdiction = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
"""Whose law governs a site's data: a jurisdiction some rulebook in force governs (``CN``,
``EU``, ``US``, or a user's own rulebook's, listed under ``[rulebooks] extra``). The rulebooks
are checked when they are loaded (:func:`onshore.rulebook.loader.project_rulebooks`)."""
SiteId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
"""An ISO 3166-1 alpha-2 country code."""

_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def _email(value: str) -> str:
    # The shape only (one @, a dot in the domain): enough to catch a name or a typo put here.
    if not _EMAIL.match(value):
        raise ValueError(f"not an email address: {value!r}")
    return value


Email = Annotated[str, AfterValidator(_email)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ComputeProfile(_Model):
    """What a site can compute with."""

    device: str = "cpu"
    """Torch device the site trains on (``cpu``, ``cuda``)."""
    relative_throughput: float = Field(default=1.0, gt=0)
    """Work per unit time relative to a reference site; export rules cap some sites' hardware."""
    accelerators: str = ""
    """Free text: the accelerators the site has, e.g. ``8x H20`` (for the model card)."""
    workers: int = Field(default=1, ge=1, le=4096)
    """Worker processes for the site's batch stages (ingest, classify, de-identify, training
    samples). 1 runs them in the command's own process; more run them on a local Ray instance
    of that many CPUs. With ``RAY_ADDRESS`` set, they run on that Ray cluster instead, on this
    many workers (see :mod:`onshore.sites.compute`)."""


class PrivacySettings(_Model):
    """The site's differential-privacy budget for training on its data (``privacy = {...}``):
    DP-SGD's noise and clipping, and the epsilon at ``delta`` that all training on the site's
    data together may spend, across every run. Once it is spent, the site refuses to send."""

    epsilon: float = Field(default=8.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    noise_multiplier: float = Field(default=1.0, gt=0)
    """Gaussian noise standard deviation, in units of ``max_grad_norm``."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Each sample's gradient is clipped to this L2 norm."""


class FleetSettings(_Model):
    """How the site's simulated fleet behaves (``onshore fleet simulate``)."""

    profile: Literal["cn", "eu", "us"] | None = None
    """Region profile for the simulator; defaults to the site's jurisdiction (a site under a
    rulebook of the project's own names one)."""
    fleet_share: float = Field(default=0.3, gt=0, le=1)
    """Share of passenger cars in traffic that are fleet vehicles and record."""
    no_consent_share: float = Field(default=0.15, ge=0, le=1)
    """Share of fleet vehicles whose driver has not consented to training."""
    clip_seconds: float = Field(default=20.0, ge=5, le=600)
    """Length of the window a vehicle uploads as one clip."""
    camera_share: float = Field(default=0.1, ge=0, le=1)
    """Share of fleet vehicles whose uploads carry front-camera frames."""
    camera_hz: float = Field(default=0.5, gt=0, le=10)
    """Camera frames per second in those uploads."""
    upload_format: Literal["onshore", "ros2", "foxglove"] = "onshore"
    """How the simulated vehicles write their uploads: onshore's own messages, the ROS 2
    types an Autoware vehicle records, or Foxglove's schemas with H.264 video
    (:mod:`onshore.clips.recorder`)."""


UploadRole = Literal["position", "motion", "objects", "camera"]
"""What a channel of an upload gives a clip: GNSS fixes, the vehicle's motion, the objects
tracked around it, or a camera."""


class MessageMapping(_Model):
    """How the messages of one type give one part of a clip (``[sites.<id>.ingest.types]``).

    ``fields`` maps each of the role's fields to a path in the decoded message: names joined
    by dots, ``name[3]`` for an element of a list, ``name[key]`` for the ``value`` of the
    key/value pair with that key (Foxglove's ``metadata``), and ``@log_time`` for the time the
    recorder logged the message. Fields per role (required ones marked *):

    - ``position``: ``stamp``*, ``lat``*, ``lon``* (degrees), ``status`` (below 0: no fix);
    - ``motion``: ``stamp``*, ``speed``* (m/s, forward), ``yaw_rate`` (counter-clockwise
      positive, as ROS has it), and, for objects given in a world frame, ``frame``, ``x``,
      ``y`` and ``orientation`` (a quaternion) of the vehicle in that frame;
    - ``objects``: ``stamp``*, ``list``* (the array of objects), ``frame``, and per object
      ``id``*, ``class``*, ``x``*, ``y``* (metres);
    - ``camera``: ``stamp``*, ``data``*, ``format``*, ``frame``.
    """

    role: UploadRole
    fields: dict[str, str] = Field(min_length=1)
    classes: dict[str, str] = Field(default_factory=dict)
    """Objects: each class value as the message gives it (as text) to one of onshore's
    classes (``car``, ``bus``, ``truck``, ``motorcycle``, ``bicycle``, ``pedestrian``) or
    ``ignore``; a value not listed refuses the upload."""
    yaw_rate_unit: Literal["rad/s", "deg/s"] = "rad/s"


class DetectorSettings(_Model):
    """The face and plate detectors a site's classification and de-identification run
    (``[sites.<id>.detectors]``; what each setting costs and finds is in
    :class:`onshore.classify.detectors.DetectorConfig`). A change makes the next run detect
    again: detections are kept per detector setting."""

    face_threshold: float = Field(default=0.2, gt=0.0, lt=1.0)
    """CenterFace score above which a face counts."""
    plate_threshold: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Plate detector score above which a plate counts."""
    plate_model: Literal["ssd", "onshore"] = "ssd"
    """``ssd`` (hyperlpr's, Chinese plates) or ``onshore`` (onshore's own, trained on rendered
    CN, EU and US plates; ``scripts/train-plates`` retrains it)."""
    face_precision: Literal["float32", "int8"] = "float32"
    """CenterFace's arithmetic: ``int8`` is twice as fast and misses more small faces."""
    video_stride: int = Field(default=4, ge=1)
    """In video, the detectors run on every ``video_stride``-th frame; the frames between take
    boxes moved along the tracks either side."""


class IngestSettings(_Model):
    """How the site reads uploads in standard message types (``[sites.<id>.ingest]``).

    Channels are matched by their message type: the built-in mappings cover
    ``sensor_msgs/msg/NavSatFix``, ``foxglove.LocationFix``, ``nav_msgs/msg/Odometry``,
    ``geometry_msgs/msg/TwistStamped``, ``autoware_perception_msgs/msg/TrackedObjects``,
    ``foxglove.SceneUpdate``, ``foxglove.CompressedVideo``, ``foxglove.CompressedImage`` and
    ``sensor_msgs/msg/CompressedImage``, in ROS 2 CDR, Protobuf or JSON. ``types`` adds
    mappings (or replaces a built-in one) and ``topics`` says what a channel is where its
    type alone does not.
    """

    topics: dict[str, str] = Field(default_factory=dict)
    """Topic to role: ``position``, ``motion``, ``objects``, ``camera`` or ``camera:<name>``,
    or ``ignore`` for a channel to leave out."""
    types: dict[str, MessageMapping] = Field(default_factory=dict)
    """Message type (its schema name, ``sensor_msgs/msg/NavSatFix``) to its mapping."""
    meta_record: str = Field(default="onshore.clip", min_length=1)
    """The MCAP metadata record holding the clip's fields (vin, trigger, consent...)."""
    meta_fields: dict[str, str] = Field(default_factory=dict)
    """Clip field to the key the record gives it under, where they differ."""
    meta_defaults: dict[str, str] = Field(default_factory=dict)
    """Clip field to its value when the record does not give it."""
    ego_frames: list[str] = Field(
        default_factory=lambda: ["base_link", "base_footprint", "ego", "vehicle"]
    )
    """Frame ids of the vehicle itself: objects in them are relative to the vehicle already;
    objects in any other frame are moved into the vehicle's through the motion channel's pose
    in that frame."""


class RetentionSettings(_Model):
    """How long the site keeps each kind of data (``retention = {...}``), in days from when it
        was stored: the storage period the CN annual report and the GDPR Art. 30 record state. A
        kind left out has no period configured. ``onshore retention run`` deletes what has been kept
    longer (:mod:`onshore.rights.retention`); the reports state the periods and the runs."""

    raw_days: int | None = Field(default=None, gt=0, strict=True)
    """Days the site keeps raw clips as ingested (identifiable: VIN, positions, frames)."""
    deidentified_days: int | None = Field(default=None, gt=0, strict=True)
    """Days the site keeps de-identified outputs."""


class ResponsiblePerson(_Model):
    """The person responsible for the site's data security (``responsible_person = {...}``):
    named in the CN annual report, as the controller's contact in the GDPR record and as the
    person answering for the compliance programme under 28 CFR Part 202."""

    name: str = Field(min_length=1)
    role: str = Field(default="Data security officer", min_length=1)
    """Their title, e.g. ``Data security officer`` or ``Data protection officer``."""
    email: Email
    """Where a regulator or a data subject reaches them."""

    def __str__(self) -> str:
        return f"{self.name}, {self.role} <{self.email}>"


class SiteSettings(_Model):
    """One regional data centre."""

    id: SiteId
    jurisdiction: Jurisdiction
    """Whose law governs the data recorded here: ``CN``, ``EU``, ``US``, or the jurisdiction
    of a rulebook of the project's own (``[rulebooks] extra``)."""
    entity: str = Field(min_length=1)
    """The legal entity operating the site (the data handler in that jurisdiction)."""
    country: Country | None = None
    """Where the entity and the data centre are; defaults to the jurisdiction where that is a
    country (``CN``, ``US``); a site under EU law names its member state, else the gate sees
    ``EU``."""
    linked_to: list[Country] = Field(default_factory=list)
    """Countries the entity is linked to (owners, headquarters, control): the gate checks them
    when this site receives data, e.g. against the US rule on covered persons."""
    store: str
    """fsspec URL of the site's object store, or a folder (relative to the project)."""
    catalogue: str
    """SQLAlchemy URL of the site's catalogue; a relative SQLite path is relative to the project."""
    keystore: str
    """Folder holding the site's Ed25519 key and HMAC secret (owner-only permissions)."""
    compute: ComputeProfile = ComputeProfile()
    fleet: FleetSettings = FleetSettings()
    privacy: PrivacySettings = PrivacySettings()
    retention: RetentionSettings = RetentionSettings()
    ingest: IngestSettings = IngestSettings()
    detectors: DetectorSettings = DetectorSettings()
    responsible_person: ResponsiblePerson | None = None
    """Who answers for the site's data security; reports say it is missing when unset."""

    @property
    def location(self) -> str:
        """The country where the site is: ``country``, else the jurisdiction itself."""
        return self.country or self.jurisdiction

    @property
    def region_profile(self) -> Literal["cn", "eu", "us"]:
        """The fleet simulator profile this site uses."""
        if self.fleet.profile is not None:
            return self.fleet.profile
        match self.jurisdiction:
            case "CN":
                return "cn"
            case "EU":
                return "eu"
            case "US":
                return "us"
        raise ConfigError(
            f"[sites.{self.id}] jurisdiction {self.jurisdiction}: the fleet simulator has no "
            "region profile of that name",
            hint=f"set profile = 'cn', 'eu' or 'us' under [sites.{self.id}.fleet]",
        )


class CoordinatorSettings(_Model):
    """The coordinator of federated training (``[coordinator]``): the entity that runs the
    ServerApp, aggregates the sites' model updates and releases the model. It holds no fleet
    data; it has a store for global models, a catalogue for its ledger and a keystore."""

    id: SiteId = "coordinator"
    entity: str = Field(default="Onshore Mobility Europe GmbH", min_length=1)
    """The legal entity that receives the sites' updates (the recipient the gates check)."""
    country: Country = "DE"
    """Where the coordinator and its servers are: the destination of every update."""
    linked_to: list[Country] = Field(default_factory=list)
    store: str = "coordinator/store"
    catalogue: str = "sqlite:///coordinator/store/catalogue.sqlite"
    keystore: str = "keys/coordinator"


class PartySettings(_Model):
    """Which party this folder is (``[party]``), and how its service is reached.

    A party is whoever runs a part of onshore in its own data centre: one site, or the
    coordinator. Its folder holds its own settings, store, catalogue and keystore, and its peers'
    public identities under ``peers/`` (nothing of theirs that is secret). A folder without
    ``[party]`` is a lab project: several sites' data on one machine, for simulation and
    benchmarks, which never crosses a border."""

    id: SiteId
    """The site id this folder is (one of ``[sites]``), or the coordinator's id."""
    host: str = "127.0.0.1"
    """Where ``onshore serve`` listens (``0.0.0.0`` for every address)."""
    port: int = Field(default=8443, ge=1, le=65535)
    endpoint: str | None = None
    """The URL peers reach the service at, e.g. ``https://shanghai.example.com:8443``; default
    ``https://HOST:PORT``. Its host must be one the TLS certificate names."""
    clock_skew_seconds: int = Field(default=90, ge=1, le=3600)
    """How far a peer's clock may be from this one's before its messages are refused."""
    max_body_bytes: int = Field(default=1 << 30, ge=1024)
    """The largest request body the service accepts (objects of a transfer included)."""
    federation: str | None = None
    """The coordinator's SuperLink as sites reach it (``host:port``); coordinator only,
    default the endpoint's host on port 9092."""

    @property
    def url(self) -> str:
        """The endpoint peers use: ``endpoint``, else ``https://HOST:PORT``."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


class RulebookSettings(_Model):
    """Which rulebooks the project uses (``[rulebooks]``)."""

    overrides: dict[Literal["cn", "eu", "us"], str] = Field(default_factory=dict)
    """Built-in rulebook -> YAML file (relative to the project) that replaces or ``extends`` it."""
    extra: list[str] = Field(default_factory=list)
    """YAML rulebooks of further jurisdictions."""


class Settings(_Model):
    """The whole of ``onshore.toml``."""

    name: str = "onshore"
    """A name for the project, shown in reports."""
    party: PartySettings | None = None
    """``[party]``: set in a party's folder; absent in a lab project."""
    sites: dict[str, SiteSettings] = Field(default_factory=dict)
    coordinator: CoordinatorSettings = CoordinatorSettings()
    rulebooks: RulebookSettings = RulebookSettings()
    deidentify_profiles: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    """``[deidentify.profiles.NAME] transforms = [...]``: profiles added to, or replacing, the
    built-in ``training`` and ``export`` (checked when used, by :mod:`onshore.deidentify`)."""


@dataclass(frozen=True, slots=True)
class Project:
    """A project folder and its parsed settings, with paths resolved against the folder."""

    root: Path
    settings: Settings

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def party(self) -> PartySettings | None:
        """This folder's party, or None in a lab project."""
        return self.settings.party

    @property
    def is_coordinator(self) -> bool:
        """Whether this folder is the coordinator's party."""
        party = self.settings.party
        return party is not None and party.id == self.settings.coordinator.id

    def site(self, site_id: str) -> SiteSettings:
        """The site called ``site_id``; raises :class:`SiteNotFound` naming the declared ones."""
        try:
            return self.settings.sites[site_id]
        except KeyError:
            known = ", ".join(sorted(self.settings.sites)) or "none"
            raise SiteNotFound(
                f"no site {site_id!r} in {self.config_path}",
                hint=f"declared sites: {known}",
            ) from None

    def site_for(self, site_id: str | None) -> str:
        """The site a command acts for: in a party's folder its own (``site_id``, if given,
        must be it: a party opens no other party's data); in a lab project ``site_id``, which
        must be given. Raises :class:`ConfigError` otherwise."""
        party = self.settings.party
        if party is None:
            if site_id is None:
                known = ", ".join(sorted(self.settings.sites)) or "none"
                raise ConfigError("which site? pass --site", hint=f"this project's sites: {known}")
            self.site(site_id)
            return site_id
        if self.is_coordinator:
            raise ConfigError(
                f"{self.root} is the coordinator's folder, which holds no site",
                hint="run the command in the site's own folder",
            )
        if site_id is not None and site_id != party.id:
            raise ConfigError(
                f"{self.root} is the folder of {party.id}, not of {site_id}",
                hint=f"run the command in {site_id}'s own folder: a party opens no other "
                "party's store, catalogue or keys",
            )
        return party.id

    def store_url(self, site: SiteSettings | CoordinatorSettings) -> str:
        """The site's store as an fsspec URL or absolute path."""
        if "://" in site.store:
            return site.store
        return str((self.root / site.store).resolve())

    def catalogue_url(self, site: SiteSettings | CoordinatorSettings) -> str:
        """The site's catalogue as a SQLAlchemy URL, relative SQLite paths made absolute."""
        url = site.catalogue
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str((self.root / rest).resolve())
        return url

    def keystore_path(self, site: SiteSettings | CoordinatorSettings) -> Path:
        """The site's keystore folder."""
        return (self.root / site.keystore).resolve()


_CREDENTIALS: Final = re.compile(r"(?<=://)([^/@:]*):[^/@]*@")


def redact_url(url: str) -> str:
    """``url`` with the password of any ``user:password@`` part replaced by ``***``: what
    messages, logs and exports show of store and catalogue URLs."""
    return _CREDENTIALS.sub(r"\1:***@", url)


def _parse(raw: dict[str, object], source: Path) -> Settings:
    project = raw.get("project", {})
    sites_raw = raw.get("sites", {})
    deidentify = raw.get("deidentify", {})
    unknown = set(raw) - {"project", "party", "sites", "deidentify", "rulebooks", "coordinator"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}")
    if not isinstance(project, dict) or not isinstance(sites_raw, dict):
        raise ConfigError(f"{source}: [project] and [sites] must be tables")
    sites = {}
    for site_id, body in sites_raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [sites.{site_id}] must be a table")
        defaults = {
            "id": site_id,
            "store": f"sites/{site_id}/store",
            "keystore": f"keys/{site_id}",
        }
        merged = {**defaults, **body}
        if "catalogue" not in merged:
            merged["catalogue"] = _default_catalogue(str(merged["store"]), source, site_id)
        sites[site_id] = merged
    profiles = _profiles(deidentify, source)
    try:
        settings = Settings.model_validate(
            {
                **project,
                "sites": sites,
                "deidentify_profiles": profiles,
                "rulebooks": raw.get("rulebooks", {}),
                "coordinator": raw.get("coordinator", {}),
                "party": raw.get("party"),
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if where.startswith("sites."):
            parts = where.split(".")
            where = f"[sites.{parts[1]}] {'.'.join(parts[2:])}"
        raise ConfigError(
            f"{source}: {where}: {first['msg']}", hint=f"{exc.error_count()} problem(s) in all"
        ) from exc
    party = settings.party
    if party is not None:
        if party.id != settings.coordinator.id and party.id not in settings.sites:
            raise ConfigError(
                f"{source}: [party] id {party.id!r} is neither a site of this folder nor the "
                f"coordinator ({settings.coordinator.id!r})",
                hint="a party's folder declares its own site in [sites.ID], or is the "
                "coordinator's",
            )
        others = sorted(set(settings.sites) - {party.id})
        if others:
            raise ConfigError(
                f"{source}: party {party.id} also declares site(s) {', '.join(others)}",
                hint="each site is a party of its own, in its own folder; peers are known by "
                "their identities under peers/ (onshore party trust)",
            )
    return settings


def _profiles(section: object, source: Path) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(section, dict) or set(section) - {"profiles"}:
        raise ConfigError(f"{source}: [deidentify] holds only [deidentify.profiles.NAME] tables")
    out = {}
    for name, body in section.get("profiles", {}).items():
        transforms = body.get("transforms") if isinstance(body, dict) else None
        if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
            raise ConfigError(
                f"{source}: [deidentify.profiles.{name}] needs transforms = [{{ name = ... }}, ...]"
            )
        out[name] = transforms
    return out


def _default_catalogue(store: str, source: Path, site_id: str) -> str:
    if "://" in store and not store.startswith("file://"):
        raise ConfigError(
            f"{source}: [sites.{site_id}] store {store!r} is not a local folder, "
            "so catalogue has no default",
            hint="set catalogue = a SQLAlchemy URL, e.g. postgresql+psycopg://...",
        )
    folder = store.removeprefix("file://")
    return f"sqlite:///{folder}/catalogue.sqlite"


def parse_settings(text: str, source: Path) -> Settings:
    """Parse the text of an ``onshore.toml`` (``source`` names it in errors); raises
    :class:`ConfigError` naming the field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return _parse(raw, source)


def find_project(start: Path | None = None) -> Path:
    """The project folder: ``$ONSHORE_PROJECT``, or the nearest folder from ``start`` (default:
    the working directory) upwards holding ``onshore.toml``."""
    env = os.environ.get("ONSHORE_PROJECT")
    if start is None and env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise ProjectNotFound(
        f"no {CONFIG_NAME} in {here} or any folder above it",
        hint="run 'onshore init DIR --example three-regions', then pass --project DIR "
        "or set ONSHORE_PROJECT",
    )


def load_project(path: Path | None = None) -> Project:
    """Read and validate a project. ``path`` is its folder or its ``onshore.toml``; ``None``
    looks for one with :func:`find_project`. Raises :class:`ConfigError` naming the field."""
    root = path if path is not None else find_project()
    if root.name == CONFIG_NAME:
        root = root.parent
    config = root / CONFIG_NAME
    if not config.is_file():
        raise ProjectNotFound(
            f"no {CONFIG_NAME} in {root}",
            hint="run 'onshore init DIR --example three-regions' first",
        )
    return Project(root.resolve(), parse_settings(config.read_text(encoding="utf-8"), config))
