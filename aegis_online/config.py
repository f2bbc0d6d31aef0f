"""The service's configuration: one validated tree (experts, store, bus, policies, auth, limits), from YAML and env.

One file configures every process of a deployment: the local service (``aegis-online serve --config``), the Ray
Serve application a KubeRay RayService builds (``serve.kuberay``, which gets the same tree in ``serveConfigV2``) and
the feedback workers (``feedback-worker --config``), so the learner, key prefix, experts and topics cannot diverge.

``load_config(path)`` reads the YAML file, overlays ``AEGIS_SERVE_*`` environment variables (nested with ``__``,
e.g. ``AEGIS_SERVE_STORE__REDIS_URL`` or ``AEGIS_SERVE_AUTH__KEYS_FILE``; the environment wins over the file; the
prefix keeps clear of the other commands' ``AEGIS_*`` variables, such as the feedback worker's ``AEGIS_EXPERTS``)
and validates the whole tree at once. Anything wrong fails at start with ``ConfigError``, one line per problem, each
naming the file and the dotted field: a service that starts is a service whose configuration was understood.

``ServiceConfig`` itself is a plain pydantic model (no environment look-up), so the Ray ingress can rebuild it from
the driver's JSON without reading its own environment again. API keys are ``SecretStr``: they never appear in a
``repr``, a log line or an error message (``auth`` hashes them before they leave the driver).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aegis_online import taxonomy
from aegis_online.catalog import (
    NAME_PATTERN,
    CatalogError,
    ExpertSpec,
    cpu_expert_specs,
    default_catalog_dir,
    load_catalog,
)
from aegis_online.learn import (
    ADAPTIVE_SUFFIX,
    CASCADE_MARK,
    DEFAULT_LEARNER,
    LEARNERS,
    cascade_learner_name,
    known_learner,
)
from aegis_online.learn.escalation import EscalationRule
from aegis_online.policy import PlatformFloor, TenantPolicy, resolve_category
from aegis_online.schemas import MAX_MESSAGE_CHARS, TenantId
from aegis_online.state.quotas import Bucket, ShareCap

ENV_PREFIX = "AEGIS_SERVE_"
MIN_KEY_CHARS = 16


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the field of every problem."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors (a misspelt option must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(Section):
    host: str = Field(default="127.0.0.1", description="Address to bind; anything but loopback needs API keys.")
    port: int = Field(default=8000, ge=1, le=65535)
    model_name: str = Field(
        default="aegis-online", min_length=1, max_length=128, description="Reported as `model` by /v1/moderations."
    )
    docs: bool = Field(
        default=True, description="Serve the API pages /docs and /redoc (their assets ship with the service)."
    )


class AdmissionSection(Section):
    """Admission control of the moderation routes (serve/admission.py): an AIMD concurrency limit that keeps the
    time a request takes once started near ``target_share`` of the deadline, a FIFO queue no longer than the deadline
    (or, when it stands, ``queue_target_share``) allows, and 503 + ``Retry-After`` at once for a request that cannot
    start in time."""

    enabled: bool = Field(default=True, description="false: every request starts at once (no limit, no queue).")
    initial_limit: int = Field(default=4, ge=1, le=100_000, description="Requests in progress at start (inputs).")
    min_limit: int = Field(default=1, ge=1, le=100_000, description="The limit never goes below this.")
    max_limit: int = Field(default=512, ge=1, le=100_000, description="The limit never goes above this.")
    target_share: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Latency target of a started request, as a share of deadline_ms: above it the limit shrinks "
        "(x backoff), below it grows; the rest of the deadline is room for queueing.",
    )
    backoff: float = Field(default=0.9, ge=0.5, lt=1, description="Multiplicative decrease, once per round trip.")
    queue_target_share: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Queueing delay target, as a share of deadline_ms (CoDel): once every request leaving the queue "
        "for a round trip (target_share of the deadline) waited longer, the queue is standing, not absorbing a burst, "
        "and a request is queued only if it should start within this.",
    )
    max_queue: int = Field(default=4096, ge=0, le=1_000_000, description="Most inputs waiting, whatever the deadline.")
    reserve_share: float = Field(
        default=0.1,
        ge=0,
        lt=0.5,
        description="Share of deadline_ms kept for deciding and answering once the experts are done (or late), and "
        "for what happens before the app sees a request (Ray's proxy): the experts get the rest.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionSection:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"initial_limit: must lie between min_limit ({self.min_limit}) and max_limit ({self.max_limit})"
            )
        return self


#: Catalog cost classes a cascade calls only when the cheap experts are uncertain.
EXPENSIVE_COSTS = ("gpu-small", "gpu-large", "remote")


class CascadeSection(Section):
    """Call the expensive experts only when the cheap tier's predicted loss on a request reaches the tenant's cut
    (the loss learned from feedback, the cut learned toward a target escalation rate)."""

    expensive: list[str] | None = Field(
        default=None,
        description="The expensive tier (expert names); default: the experts whose catalog cost is gpu-small, "
        "gpu-large or remote. Every other expert is in the cheap tier, which scores every request.",
    )
    target_escalation_rate: float = Field(
        default=EscalationRule.target_rate,
        ge=0.0,
        le=1.0,
        description="The share of requests the cut is learned to escalate, counted in expensive calls: an "
        "escalation that calls more than experts_per_escalation (exploration, hedging) counts for more, so the "
        "expensive calls per request are this times experts_per_escalation.",
    )
    step: float = Field(
        default=EscalationRule.step, gt=0.0, le=1.0, description="How far one request moves the cut's logarithm."
    )
    initial_cut: float = Field(
        default=EscalationRule.initial,
        gt=0.0,
        le=10.0,
        description="The cut a tenant starts with (a predicted squared loss).",
    )
    experts_per_escalation: int = Field(
        default=EscalationRule.experts_per_escalation,
        ge=0,
        le=64,
        description="Expensive experts an escalated request calls: the ones the tenant's weights trust most "
        "(0: every expensive expert). At most the size of the expensive tier.",
    )
    cheap_deadline_share: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="The share of a request's deadline (limits.deadline_ms) the cheap tier may take; the rest is "
        "kept for the expensive tier, so a cheap expert that times out (which escalates the request) leaves the "
        "guard time to answer.",
    )
    exploration: float = Field(
        default=EscalationRule.exploration,
        ge=0.0,
        le=1.0,
        description="The chance that an escalated request also calls each other expensive expert, so that the "
        "weights keep measuring it.",
    )
    hedge_share: float = Field(
        default=EscalationRule.hedge_share,
        ge=0.0,
        le=1.0,
        description="An escalated request also calls each other expensive expert whose share of the weight it and "
        "the chosen expert hold in one of its categories, times how far apart the two experts' scores have lain "
        "there (measured on labelled requests that called both), reaches this: the weights have not told them "
        "apart and leaving it out would move their combined score by about this much. Experts that agree are not "
        'both called (0: never hedge; docs/cascade.md, "Hedging").',
    )
    failed_cooldown_s: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description="Seconds an expensive expert that failed or timed out is passed over when the most trusted are "
        "chosen, while another can answer (then it is tried again): while a guard is down, escalations go to the "
        "others at once instead of paying its failure first (0: always try the most trusted first).",
    )


class LimitsSection(Section):
    deadline_ms: int = Field(
        default=2000,
        ge=1,
        le=120_000,
        description="Budget of a moderation request, queueing included: the experts get what is left of it (less "
        "admission.reserve_share); one that misses it is named in missing_experts and sleeps.",
    )
    admission: AdmissionSection = Field(default_factory=AdmissionSection, description="Load shedding.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_inputs: int = Field(default=32, ge=1, le=1024, description="Most inputs in one /v1/moderations call.")
    max_input_chars: int = Field(
        default=MAX_MESSAGE_CHARS,
        ge=1,
        le=MAX_MESSAGE_CHARS,
        description="Most characters of one /v1/moderations input and of one /v1/moderate message (longer: 4xx).",
    )
    max_feedback_batch: int = Field(default=1000, ge=1, le=100_000, description="Most events in one feedback call.")
    feedback_ack_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Wait for the bus to take an event.")


class Autoscaling(Section):
    """Ray Serve autoscaling of one deployment's replicas; on KubeRay the Ray autoscaler adds pods to fit them."""

    min_replicas: int = Field(default=1, ge=0, le=1024)
    max_replicas: int = Field(ge=1, le=1024)
    target_ongoing_requests: float = Field(default=8.0, gt=0, le=10_000, description="Per replica.")

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self

    def to_ray(self) -> dict[str, float]:
        """Ray Serve's ``autoscaling_config``."""
        return self.model_dump()


class IngressSection(Section):
    replicas: int = Field(default=1, ge=1, le=256)
    autoscaling: Autoscaling | None = Field(default=None, description="Instead of a fixed number of replicas.")
    num_cpus: float = Field(default=0.5, gt=0, le=64, description="Besides the experts placed in the ingress.")
    max_ongoing_requests: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="Requests Ray Serve hands one replica at once: high, so that admission control (limits."
        "admission), which sees deadlines, decides what waits; the proxy would queue the rest unseen.",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=-1,
        le=100_000,
        description="Requests the Ray proxy holds while every replica has max_ongoing_requests; beyond, it answers "
        "503 with Retry-After at once. -1: no bound.",
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _ray_accepts(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (no bound) or at least 1 (Ray Serve's rule)")
        return value


class ExpertServing(Section):
    """How one catalog expert is served: replicas, batching and resources (default: the catalog's hardware)."""

    name: str = Field(pattern=NAME_PATTERN)
    placement: Literal["auto", "ingress", "replica"] = Field(
        default="auto",
        description="replica: a deployment of its own, called through a Ray handle; ingress: built inside each "
        "ingress replica and called in process (no hop; CPU only, scales with the ingress); auto: ingress for a "
        "catalog cost of cpu-light with one replica and no GPU, else replica.",
    )
    replicas: int = Field(default=1, ge=1, le=256)
    autoscaling: Autoscaling | None = Field(default=None, description="Instead of a fixed number of replicas.")
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    batch_wait_timeout_ms: float = Field(default=2.0, ge=0, le=1000)
    max_ongoing_requests: int = Field(default=64, ge=1, le=10_000)
    num_cpus: float | None = Field(default=None, gt=0, le=256, description="Default: the catalog's hardware.cpus.")
    num_gpus: float | None = Field(default=None, ge=0, le=64, description="Default: the catalog's hardware.gpus.")
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Math-library threads per replica (torch, OpenMP); default: Ray's, the CPUs reserved (at least 1).",
    )
    backend_options: dict[str, Any] = Field(default_factory=dict, description="Merged over the catalog's.")

    @model_validator(mode="after")
    def _batch_fits(self) -> ExpertServing:
        # Ray Serve never fills a batch larger than the requests a replica may hold (field notes, section 6).
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) must not exceed max_ongoing_requests "
                f"({self.max_ongoing_requests}): larger batches can never fill"
            )
        if self.placement == "ingress" and (self.replicas != 1 or self.autoscaling is not None):
            raise ValueError("placement: an expert in the ingress scales with the ingress; drop replicas/autoscaling")
        return self

    def in_ingress(self, spec: ExpertSpec) -> bool:
        """Whether this expert runs inside the ingress process (see ``placement``)."""
        if self.placement != "auto":
            return self.placement == "ingress"
        gpus = self.num_gpus if self.num_gpus is not None else spec.hardware.gpus
        return spec.cost == "cpu-light" and not gpus and self.replicas == 1 and self.autoscaling is None


class ExpertsSection(Section):
    catalog: Path | None = Field(default=None, description="Catalog folder; default: the repository's experts/.")
    use: list[ExpertServing] | None = Field(
        default=None,
        min_length=1,
        description="Experts to serve, in order (names or objects); default: the catalog's CPU experts.",
    )

    @field_validator("use", mode="before")
    @classmethod
    def _names_to_objects(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("use")
    @classmethod
    def _unique(cls, value: list[ExpertServing] | None) -> list[ExpertServing] | None:
        names = [e.name for e in value or ()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experts listed twice: {dupes}")
        return value


class BanditSection(Section):
    k: int = Field(ge=1, description="Experts queried per request.")
    always: list[str] = Field(default_factory=list, description="Experts queried on every request.")


BANDIT_LEARNERS = tuple(sorted(name for name, cls in LEARNERS.items() if cls.bandit))


class LearnerSection(Section):
    name: str = Field(
        default=DEFAULT_LEARNER,
        description=f"Online learner of the weights (learn.LEARNERS); with {ADAPTIVE_SUFFIX}, over calibrated "
        "experts and with learned thresholds (not for bandit learners).",
    )
    bandit: BanditSection | None = Field(
        default=None,
        description=f"Bandit mode: query k experts per request; needs name: {' or '.join(BANDIT_LEARNERS)}.",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if CASCADE_MARK in value:
            wrapped = value.partition(CASCADE_MARK)[0] + (ADAPTIVE_SUFFIX if value.endswith(ADAPTIVE_SUFFIX) else "")
            raise ValueError(
                f"{value!r} is a cascade-aware learner's name, which the service makes from the cascade: section; "
                f"give the learner it wraps ({wrapped!r})"
            )
        if not known_learner(value):
            raise ValueError(
                f"unknown learner {value!r}; choose one of {sorted(LEARNERS)}, optionally with {ADAPTIVE_SUFFIX} "
                f"(not for {', '.join(BANDIT_LEARNERS)})"
            )
        return value

    @model_validator(mode="after")
    def _bandit_learner(self) -> LearnerSection:
        # The learner is an explicit choice: bandit mode never swaps the named learner for another behind its back.
        bandit_learner = LEARNERS[self.name.removesuffix(ADAPTIVE_SUFFIX)].bandit
        if self.bandit is not None and not bandit_learner:
            raise ValueError(
                f"name: bandit mode (learner.bandit) learns only from the experts it queried and needs a bandit "
                f"learner; set learner.name: {' or '.join(BANDIT_LEARNERS)} (got {self.name!r})"
            )
        if self.bandit is None and bandit_learner:
            raise ValueError(f"bandit: {self.name} is a bandit learner; set learner.bandit: {{k: ...}}")
        return self


class StoreSection(Section):
    kind: Literal["memory", "redis"] = "memory"
    persist: bool = Field(
        default=True,
        description="memory: keep learner state, policies, the prediction log and queued feedback in an embedded "
        "SQLite database under data_dir, so a restart loses nothing; false keeps everything in memory only.",
    )
    data_dir: Path = Field(
        default=Path("aegis-data"),
        description="memory with persist: folder of the embedded database (created 0700, files 0600); relative "
        "paths are taken from the config file's folder, or the working directory.",
    )
    max_predictions: int = Field(
        default=1_000_000, ge=1, description="memory: most prediction records kept (oldest evicted first)."
    )
    redis_url: str | None = Field(default=None, description="redis: redis:// or rediss:// URL.")
    prefix: str = Field(default="aegis:", min_length=1, max_length=64)
    cluster: bool = False
    timeout_ms: int = Field(default=500, ge=10, le=30_000, description="Socket timeout of the request path.")
    weights_max_staleness_s: float = Field(
        default=1.0, gt=0, le=3600, description="Weights used by a request are at most this old (redis)."
    )
    policy_cache_s: float = Field(default=5.0, ge=0, le=3600, description="A changed policy is seen within this.")
    retry_after_s: float = Field(default=1.0, gt=0, le=300, description="After a store failure, wait before retrying.")
    prediction_ttl_s: float = Field(default=7 * 24 * 3600, gt=0, description="How long feedback can still join.")

    @model_validator(mode="after")
    def _backend_needs(self) -> StoreSection:
        if self.kind == "redis" and not self.redis_url:
            raise ValueError("redis_url: the redis store needs a URL (e.g. redis://127.0.0.1:6379/0)")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url: must start with redis://, rediss:// or unix://")
        return self


class BusSection(Section):
    kind: Literal["inprocess", "kafka"] = "inprocess"
    bootstrap_servers: str | None = Field(default=None, description="kafka: host:port[,host:port...].")
    topic: str = Field(default="aegis.feedback", min_length=1, max_length=249)
    dead_letter_topic: str = Field(
        default="aegis.feedback.dead-letter", min_length=1, max_length=249, description="kafka: refused events."
    )
    partitions: int = Field(default=1, ge=1, le=1024, description="inprocess: partitions of the queue.")
    max_pending: int = Field(default=100_000, ge=1, description="inprocess: events waiting before publish blocks.")

    @model_validator(mode="after")
    def _backend_needs(self) -> BusSection:
        if self.kind == "kafka" and not self.bootstrap_servers:
            raise ValueError("bootstrap_servers: the kafka bus needs brokers (e.g. 127.0.0.1:9092)")
        return self


class ApiKey(Section):
    """One API key: the secret (or its SHA-256), the tenant it acts for and its role."""

    name: str | None = Field(default=None, max_length=64, description="A label for logs; never the key.")
    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    tenant: TenantId | None = Field(
        default=None,
        description="Required for clients; moderators and admins without one act for every tenant.",
    )
    role: Literal["client", "moderator", "admin"] = Field(
        default="client",
        description="client: moderates and labels for its tenant; moderator: also its labels train the global "
        "weights; admin: everything, policies included.",
    )

    @model_validator(mode="after")
    def _complete(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of 'key' and 'key_sha256'")
        if self.key is not None and len(self.key.get_secret_value()) < MIN_KEY_CHARS:
            raise ValueError(f"key: must be at least {MIN_KEY_CHARS} characters (use a random token)")
        if self.role == "client" and self.tenant is None:
            raise ValueError("tenant: a client key acts for one tenant; name it")
        return self


class AuthSection(Section):
    keys_file: Path | None = Field(default=None, description="YAML or JSON secrets file: a list under 'keys'.")
    keys: list[ApiKey] = Field(default_factory=list, description="Inline keys (prefer keys_file or the env).")
    protect_metrics: bool = Field(default=False, description="Require an admin key for /metrics.")


class RateLimit(Section):
    """One token bucket: ``rate`` units per ``per`` (a moderation input, or a feedback event), ``burst`` at once."""

    rate: float = Field(gt=0, description="Units per period.")
    per: Literal["second", "minute", "hour", "day"] = "second"
    burst: float | None = Field(default=None, gt=0, description="Most units at once; default: one period's rate.")

    def bucket(self) -> Bucket:
        seconds = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}[self.per]
        return Bucket(rate_per_s=self.rate / seconds, burst=self.burst if self.burst is not None else self.rate)


class TenantRateLimits(Section):
    """A tenant's buckets per endpoint class; every bucket of a class must have room for a call to pass."""

    moderate: list[RateLimit] = Field(
        default_factory=list, max_length=8, description="/v1/moderate and /v1/moderations (one unit per input)."
    )
    feedback: list[RateLimit] = Field(default_factory=list, max_length=8, description="/v1/feedback (per event).")


class RateLimitsSection(Section):
    """Per-tenant rate limits and quotas (429 with Retry-After); admin keys are not limited. Kept in Redis with the
    redis store (shared by every replica), in the process otherwise."""

    default: TenantRateLimits = Field(default_factory=TenantRateLimits, description="Tenants without their own.")
    tenants: dict[TenantId, TenantRateLimits] = Field(default_factory=dict, description="By tenant id.")

    def for_tenant(self, tenant: str) -> TenantRateLimits:
        return self.tenants.get(tenant, self.default)


class GlobalLearningSection(Section):
    """Which feedback trains the global weights every tenant starts from (each tenant's own always learn)."""

    contributors: list[TenantId] = Field(
        default_factory=list,
        description="Tenants whose client keys' feedback also trains the global weights, within max_share. "
        "Moderator and admin keys always do.",
    )
    max_share: float = Field(default=0.25, gt=0, le=1, description="Most of a window's global updates per tenant.")
    window_s: float = Field(default=3600.0, gt=0, le=30 * 86400, description="Window of max_share.")
    min_events: int = Field(default=20, ge=0, description="A contributor may always add this many per window.")

    def cap(self) -> ShareCap:
        return ShareCap(max_share=self.max_share, window_s=self.window_s, min_events=self.min_events)


class RaySection(Section):
    address: str = Field(default="local", description="'local' starts a Ray instance; 'auto' or an address joins.")
    num_cpus: float | None = Field(default=None, gt=0, description="CPUs of a local Ray (default: all).")
    temp_dir: Path | None = Field(
        default=None,
        description="Where a local Ray's private session folders (aegis-ray-*) are made (default /tmp; keep it "
        "short: Ray's socket paths inside must fit in 107 characters).",
    )


class ChatUpstream(Section):
    """An OpenAI-compatible LLM server the chat proxy forwards to (vLLM, Ollama, OpenAI, ...)."""

    base_url: str = Field(
        pattern=r"^https?://", description="Its OpenAI base URL, e.g. http://vllm:8000/v1 (the proxy adds /chat/...)."
    )
    api_key_env: str | None = Field(default=None, description="Environment variable holding its API key.")
    api_key_file: Path | None = Field(default=None, description="File holding its API key (a mounted Secret).")
    model: str | None = Field(default=None, description="Model sent upstream; default: the client's.")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    read_timeout_s: float = Field(default=60.0, gt=0, le=600, description="Longest wait for the answer or a chunk.")
    total_timeout_s: float = Field(default=300.0, gt=0, le=3600, description="Longest a whole answer may take.")

    def api_key(self) -> str | None:
        """The key, read at each call (a rotated Secret file takes effect at once); None when none is set."""
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip() or None
        if self.api_key_env is not None:
            return os.environ.get(self.api_key_env) or None
        return None


class ChatOptions(Section):
    """How the proxy moderates; the ``chat`` section's defaults, overridable per tenant."""

    upstream: ChatUpstream | None = None
    mode: Literal["check_first", "stream_first"] | None = Field(
        default=None,
        description="check_first: a window of a streamed answer reaches the client only once checked; stream_first: "
        "tokens flow at once, checks run behind (at most one window) and cut the stream when one fails.",
    )
    window_chars: int | None = Field(
        default=None,
        ge=20,
        le=20_000,
        description="Most new characters per checked window; one ends sooner, at the first sentence end past a "
        "quarter of it.",
    )
    overlap_chars: int | None = Field(default=None, ge=0, le=5_000, description="Characters of overlap per window.")
    prompt_block: Literal["refusal", "error"] | None = Field(
        default=None, description="A blocked prompt: an assistant refusal (finish_reason content_filter) or a 400."
    )
    cut_on: Literal["block", "flag"] | None = Field(
        default=None, description="The action (or worse) of the tenant's policy that blocks a prompt or cuts an answer."
    )
    refusal: str | None = Field(default=None, max_length=2000, description="The refusal message.")


class ChatSection(ChatOptions):
    """``POST /v1/chat/completions``: a guarded OpenAI-compatible proxy (absent ``upstream``: the route answers 404)."""

    tenants: dict[TenantId, ChatOptions] = Field(default_factory=dict, description="Per-tenant overrides.")

    def for_tenant(self, tenant: str) -> ResolvedChat | None:
        """This tenant's options, its overrides over the section's, with defaults; None when no upstream is set."""
        own = self.tenants.get(tenant)
        merged = {
            name: getattr(own, name) if own is not None and getattr(own, name) is not None else getattr(self, name)
            for name in ChatOptions.model_fields
        }
        if merged["upstream"] is None:
            return None
        return ResolvedChat(**{k: v for k, v in merged.items() if v is not None})


class ResolvedChat(Section):
    """One tenant's chat options, every field set."""

    upstream: ChatUpstream
    mode: Literal["check_first", "stream_first"] = "check_first"
    window_chars: int = 400
    overlap_chars: int = 100
    prompt_block: Literal["refusal", "error"] = "refusal"
    cut_on: Literal["block", "flag"] = "block"
    refusal: str = "I can't help with that."


class ServiceConfig(Section):
    """The whole service configuration."""

    server: ServerSection = Field(default_factory=ServerSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    ingress: IngressSection = Field(default_factory=IngressSection)
    experts: ExpertsSection = Field(default_factory=ExpertsSection)
    learner: LearnerSection = Field(default_factory=LearnerSection)
    store: StoreSection = Field(default_factory=StoreSection)
    bus: BusSection = Field(default_factory=BusSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    policies: list[TenantPolicy] = Field(default_factory=list, description="Seeded when a tenant has none stored.")
    floors: dict[str, PlatformFloor] = Field(
        default_factory=dict,
        description="The platform operator's per-category floors (category id or slug -> threshold and action): a "
        "score at or above a floor is acted on whatever a tenant's policy or learned threshold says.",
    )
    rate_limits: RateLimitsSection = Field(default_factory=RateLimitsSection)
    global_learning: GlobalLearningSection = Field(default_factory=GlobalLearningSection)
    ray: RaySection = Field(default_factory=RaySection)
    chat: ChatSection = Field(default_factory=ChatSection, description="The guarded chat proxy.")
    cascade: CascadeSection | None = Field(
        default=None, description="Cascade mode (null: every expert scores every request)."
    )

    @field_validator("policies")
    @classmethod
    def _one_per_tenant(cls, value: list[TenantPolicy]) -> list[TenantPolicy]:
        tenants = [p.tenant for p in value]
        dupes = sorted({t for t in tenants if tenants.count(t) > 1})
        if dupes:
            raise ValueError(f"more than one policy for tenants {dupes}")
        return value

    @field_validator("floors")
    @classmethod
    def _floor_categories(cls, value: dict[str, PlatformFloor]) -> dict[str, PlatformFloor]:
        known = taxonomy.CategorySet.default()
        resolved = {}
        for key, floor in value.items():
            cat = resolve_category(key, known)
            if cat is None:
                raise ValueError(f"floors.{key}: unknown category; use a canonical id (S1..S24) or slug")
            resolved[cat] = floor
        return resolved

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        if self.store.kind == "memory" and (self.ingress.replicas > 1 or self.ingress.autoscaling is not None):
            raise ValueError(
                "ingress.replicas: the memory store keeps weights and predictions inside one process, so the "
                "ingress must have 1 replica; use store.kind: redis to scale it out"
            )
        if self.learner.bandit is not None and self.experts.use is not None:
            names = {e.name for e in self.experts.use}
            unknown = sorted(set(self.learner.bandit.always) - names)
            if unknown:
                raise ValueError(f"learner.bandit.always: {unknown} are not in experts.use")
        return self

    def with_server(self, host: str | None = None, port: int | None = None) -> ServiceConfig:
        """A copy with the command line's host and port (validated like the file's)."""
        server = self.server.model_dump()
        server.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
        return self.model_copy(update={"server": ServerSection.model_validate(server)})

    def with_data_dir(self, data_dir: Path | None) -> ServiceConfig:
        """A copy whose embedded store lives in ``data_dir`` (the command line's ``--data-dir``); None: unchanged."""
        if data_dir is None:
            return self
        store = self.store.model_dump() | {"data_dir": data_dir}
        return self.model_copy(update={"store": StoreSection.model_validate(store)})

    def expert_plan(self) -> list[tuple[ExpertSpec, ExpertServing]]:
        """The catalog entry and serving options of each expert to serve, in order; ConfigError when unknown."""
        try:
            specs = load_catalog(self.experts.catalog or default_catalog_dir())
        except CatalogError as error:
            raise ConfigError(f"experts.catalog: {error}") from None
        by_name = {s.name: s for s in specs}
        chosen = self.experts.use or [ExpertServing(name=s.name) for s in cpu_expert_specs(specs)]
        if not chosen:
            raise ConfigError("experts.use: the catalog has no CPU expert; list the experts to serve")
        plan = []
        for i, serving in enumerate(chosen):
            spec = by_name.get(serving.name)
            if spec is None:
                raise ConfigError(
                    f"experts.use.{i}: unknown expert {serving.name!r}; the catalog has {sorted(by_name)}"
                )
            spec = _as_served(f"experts.use.{i}", spec, serving)
            gpus = spec.hardware.gpus
            if serving.placement == "ingress" and gpus:
                raise ConfigError(
                    f"experts.use.{i}.placement: {serving.name} needs {gpus:g} GPU and the ingress has none; "
                    "use placement: replica"
                )
            plan.append((spec, serving))
        if self.learner.bandit is not None and self.learner.bandit.k > len(plan):
            raise ConfigError(f"learner.bandit.k: {self.learner.bandit.k} is more than the {len(plan)} experts")
        return plan

    def learner_name(self, served: Sequence[str]) -> str:
        """The learner that the service over ``served`` runs and its feedback workers update (its name names the
        keys): ``learner.name``, made cascade-aware for the expensive tier in cascade mode."""
        expensive = self.cascade_expensive(served)
        if expensive is None:
            return self.learner.name
        return cascade_learner_name(self.learner.name, [i for i, name in enumerate(served) if name in expensive])

    def cascade_expensive(self, served: Sequence[str]) -> frozenset[str] | None:
        """The cascade's expensive tier among the ``served`` experts (None: no cascade): ``cascade.expensive``, or
        the planned experts whose catalog cost is expensive. ConfigError when it would be empty, hold every expert,
        name an expert not served, or be combined with bandit mode."""
        if self.cascade is None:
            return None
        if self.learner.bandit is not None:
            raise ConfigError("cascade: bandit mode (learner.bandit) and a cascade both choose the experts; use one")
        if self.cascade.expensive is not None:
            unknown = sorted(set(self.cascade.expensive) - set(served))
            if unknown:
                raise ConfigError(f"cascade.expensive: {unknown} are not among the experts served ({list(served)})")
            expensive = frozenset(self.cascade.expensive)
        else:
            costly = {spec.name for spec, _ in self.expert_plan() if spec.cost in EXPENSIVE_COSTS}
            expensive = frozenset(name for name in served if name in costly)
        if not expensive or expensive >= set(served):
            raise ConfigError(
                f"cascade.expensive: a cascade needs at least one expensive and one cheap expert; expensive "
                f"{sorted(expensive)} of {list(served)}"
            )
        if self.cascade.experts_per_escalation > len(expensive):
            raise ConfigError(
                f"cascade.experts_per_escalation: {self.cascade.experts_per_escalation} is more than the expensive "
                f"tier holds ({sorted(expensive)}); give at most {len(expensive)}, or 0 for all of them"
            )
        return expensive


def _as_served(where: str, spec: ExpertSpec, serving: ExpertServing) -> ExpertSpec:
    """The catalog entry as ``serving`` runs it: its backend_options under the config's, its GPUs the config's
    ``num_gpus`` when given; validated again, so the entry's own rules hold for what is served."""
    if not serving.backend_options and serving.num_gpus is None:
        return spec
    options = spec.backend_options | serving.backend_options
    gpus = serving.num_gpus if serving.num_gpus is not None else spec.hardware.gpus
    shards = options.get("tensor_parallel_size", 1) if spec.backend == "vllm" else 1
    if isinstance(shards, int) and shards > 1 and gpus != shards:
        raise ConfigError(
            f"{where}.num_gpus: {spec.name} shards over tensor_parallel_size {shards}, one whole GPU each; "
            f"set num_gpus: {shards}"
        )
    document = spec.model_dump() | {"backend_options": options, "hardware": spec.hardware.model_dump() | {"gpus": gpus}}
    try:
        return ExpertSpec.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise ConfigError(f"{where}: {problems}") from None


class _Settings(ServiceConfig, BaseSettings):  # type: ignore[misc]
    """The loader: YAML values under environment values, typed like ``ServiceConfig`` so that the environment's
    JSON values (``AEGIS_SERVE_AUTH__KEYS='[...]'``) are parsed. Only ``load_config`` uses it."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment overrides the file


SECTIONS = tuple(ServiceConfig.model_fields)


def _resolve_paths(document: dict[str, Any], base: Path) -> None:
    """Relative paths in the file are relative to the file, not to wherever the service was started."""
    for section, key in (("experts", "catalog"), ("store", "data_dir"), ("auth", "keys_file")):
        value = document.get(section, {}).get(key) if isinstance(document.get(section), dict) else None
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            document[section][key] = str((base / value).resolve())


def _error_lines(source: str, error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        head, sep, rest = message.partition(": ")
        if sep and " " not in head:  # a check that names its own field: "redis_url: the redis store needs a URL"
            where, message = f"{where}.{head}" if where else head, rest
        lines.append(f"{source}: {where or '(config)'}: {message}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, *, environ: bool = True) -> ServiceConfig:
    """The configuration from ``path`` (YAML; None: defaults only) under ``AEGIS_SERVE_*`` environment overrides.

    >>> load_config(environ=False).store.kind
    'memory'
    """
    if path is None:
        return config_from_document({}, source="(defaults)", environ=environ)
    file = Path(path)
    try:
        loaded = yaml.safe_load(file.read_text())
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the config file: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    document = {} if loaded is None else loaded
    if isinstance(document, dict):
        _resolve_paths(document, file.resolve().parent)
    return config_from_document(document, source=str(file), environ=environ)


def config_from_document(document: Any, *, source: str, environ: bool = True) -> ServiceConfig:
    """Validate a parsed configuration (a YAML file's, or the one a RayService embeds) under the environment.

    ``source`` names where it came from in every error line. Relative paths are taken as they are.

    >>> config_from_document({"bus": {"kind": "kafka"}}, source="inline", environ=False)
    Traceback (most recent call last):
    ...
    aegis_online.config.ConfigError: inline: bus.bootstrap_servers: the kafka bus needs brokers (e.g. 127.0.0.1:9092)
    """
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(document).__name__}")
    unknown = sorted(set(document) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown sections {unknown}; the sections are {list(SECTIONS)}")
    try:
        if not environ:
            return ServiceConfig.model_validate(document)
        settings = _Settings(**document)
    except ValidationError as error:
        where = f"{source} (with {ENV_PREFIX}* environment)" if environ else source
        raise ConfigError(_error_lines(where, error)) from None
    return ServiceConfig.model_construct(**{name: getattr(settings, name) for name in SECTIONS})


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost).

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
