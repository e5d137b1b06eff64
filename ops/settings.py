"""Configuration, read from the environment in one place (12-factor).

Every variable has a default that works on a laptop; production values come from the Helm chart. A variable
``NAME_FILE`` may name a file holding the value of ``NAME`` (mounted Kubernetes secrets); it wins over ``NAME``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import msgspec

#: The signing secret used when ``STRIPE_WEBHOOK_SECRETS`` is unset. Local development only: the gateway warns
#: loudly when it runs with it.
DEV_WEBHOOK_SECRET = "whsec_hookstream_local_development_secret"

_TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]*$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SECRETS_SEPARATOR = re.compile(r"[\s,]+")
#: The longest duration any setting takes: Kafka and librdkafka count milliseconds in 32 bits (~24.8 days).
MAX_SECONDS = 2_147_483
_MAX_PORT = 65_535
#: How clients reach the brokers (KAFKA_SECURITY_PROTOCOL), as Kafka names them.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms that log in with KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (aiokafka and librdkafka both have them)
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Kafka's batch compression codecs (PRODUCER_COMPRESSION).
COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


class ConfigError(ValueError):
    """A configuration variable has a value hookstream cannot use."""


#: Kafka's own ``message.max.bytes``: the default of KAFKA_MAX_MESSAGE_BYTES, and what a topic takes unless set.
KAFKA_MESSAGE_MAX_BYTES = 1_048_588


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything hookstream reads from its environment. See README.md, "Configuration"."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_key_password: str | None = None
    kafka_enable_idempotence: bool = True
    kafka_max_message_bytes: int = KAFKA_MESSAGE_MAX_BYTES
    stripe_webhook_secrets: tuple[str, ...] = (DEV_WEBHOOK_SECRET,)
    stripe_webhook_tolerance: int = 300
    gateway_host: str = "0.0.0.0"
    gateway_port: int = 8000
    gateway_max_body_bytes: int = 1_048_576
    gateway_max_header_bytes: int = 65_536
    gateway_client_timeout: float = 10.0
    gateway_keepalive_timeout: float = 75.0
    gateway_publish_timeout: float = 10.0
    gateway_retry_after: int = 5
    producer_linger_ms: int = 2
    producer_max_batch_size: int = 1_048_576
    producer_batch_records: int = 16
    producer_compression: str = "lz4"
    topic_prefix: str = "stripe."
    topic_partitions: int = 8
    topic_replication_factor: int = 1
    topic_min_insync_replicas: int = 0  # 0: the brokers' default (Kafka's is 1)
    worker_web_port: int = 6066
    worker_web_bind: str = "0.0.0.0"
    worker_web_host: str | None = None
    worker_app_id: str = "hookstream"
    worker_max_inflight: int = 1000
    worker_rebalance_timeout: float = 60.0
    worker_session_timeout: float = 30.0
    worker_producer_max_batch_size: int = 1_048_576
    worker_lag_interval: float = 5.0
    handler_modules: tuple[str, ...] = ("handlers",)
    handler_max_attempts: int = 5
    handler_retry_backoff: float = 0.2
    handler_retry_max_backoff: float = 30.0
    handler_timeout: float = 30.0
    state_store: str = "memory://"
    worker_data_dir: str | None = None
    log_level: str = "INFO"

    @property
    def kafka_tls(self) -> bool:
        """Whether the brokers are reached over TLS (``SSL`` or ``SASL_SSL``)."""
        return self.kafka_security_protocol.endswith("SSL")

    @property
    def kafka_sasl(self) -> bool:
        """Whether clients log in to the brokers (``SASL_PLAINTEXT`` or ``SASL_SSL``)."""
        return self.kafka_security_protocol.startswith("SASL")

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}dlq"

    @property
    def replay_group(self) -> str:
        """The consumer group of ``hookstream replay``: its commits say which dead letters were taken."""
        return f"{self.worker_app_id}-replay"

    @property
    def worker_producer_batch_bytes(self) -> int:
        """The worker producer's batch size: WORKER_PRODUCER_MAX_BATCH_SIZE, within what the brokers take. A
        changelog batch (streams/table.py) over KAFKA_MAX_MESSAGE_BYTES would be refused whole, every time."""
        return min(self.worker_producer_max_batch_size, self.kafka_max_message_bytes)

    @property
    def changelog_topic(self) -> str:
        """The objects table's changelog (Faust's name for it): the workers' record of every applied event."""
        return f"{self.worker_app_id}-objects-changelog"

    @property
    def rebalance_grace(self) -> float:
        """What events still running at a rebalance get before they are cancelled: ``HANDLER_TIMEOUT``, at most half
        of ``WORKER_REBALANCE_TIMEOUT``. The group gives a member that has not rejoined within that timeout's
        partitions to the others, and no event may run on once its partition is another worker's; the other half is
        for the changelog's flush and the join."""
        return min(self.handler_timeout, self.worker_rebalance_timeout / 2)

    @property
    def using_dev_secret(self) -> bool:
        return DEV_WEBHOOK_SECRET in self.stripe_webhook_secrets

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), failing with a message naming the variable."""
        env = _Env(os.environ if environ is None else environ)
        secrets = split_secrets(env.text("STRIPE_WEBHOOK_SECRETS", DEV_WEBHOOK_SECRET))
        if not secrets:
            raise ConfigError("STRIPE_WEBHOOK_SECRETS: no secret given (whsec_... values, comma-separated)")
        for number, secret in enumerate(secrets, 1):  # a comment in a secrets file must not become a key
            if not secret.startswith("whsec_") or secret == "whsec_":  # "whsec_" alone: a template's placeholder
                raise ConfigError(f"STRIPE_WEBHOOK_SECRETS: secret {number} is not whsec_ and a key (not shown)")
        prefix = env.text("TOPIC_PREFIX", "stripe.")
        if not _TOPIC_PREFIX_RE.match(prefix):
            raise ConfigError(f"TOPIC_PREFIX: {prefix!r} may only hold letters, digits, '.', '_' and '-'")
        replication = env.integer("TOPIC_REPLICATION_FACTOR", 1, minimum=1)
        min_insync = env.integer("TOPIC_MIN_INSYNC_REPLICAS", 0, minimum=0)
        if min_insync > replication:
            raise ConfigError(
                f"TOPIC_MIN_INSYNC_REPLICAS: {min_insync} is above TOPIC_REPLICATION_FACTOR ({replication}): "
                "the brokers could never acknowledge a write to the topics hookstream creates"
            )
        settings = cls(
            kafka_bootstrap_servers=env.text("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            kafka_security_protocol=env.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", SECURITY_PROTOCOLS),
            kafka_sasl_mechanism=env.choice("KAFKA_SASL_MECHANISM", "PLAIN", SASL_MECHANISMS),
            kafka_sasl_username=env.optional("KAFKA_SASL_USERNAME"),
            kafka_sasl_password=env.optional("KAFKA_SASL_PASSWORD"),
            kafka_ssl_cafile=env.optional("KAFKA_SSL_CAFILE"),
            kafka_ssl_certfile=env.optional("KAFKA_SSL_CERTFILE"),
            kafka_ssl_keyfile=env.optional("KAFKA_SSL_KEYFILE"),
            kafka_ssl_key_password=env.optional("KAFKA_SSL_KEY_PASSWORD"),
            kafka_enable_idempotence=env.flag("KAFKA_ENABLE_IDEMPOTENCE", True),
            # the brokers' message.max.bytes (Kafka's default): a larger record batch is refused
            kafka_max_message_bytes=env.integer(
                "KAFKA_MAX_MESSAGE_BYTES", KAFKA_MESSAGE_MAX_BYTES, minimum=1024, maximum=1_000_000_000
            ),
            stripe_webhook_secrets=secrets,
            stripe_webhook_tolerance=env.integer("STRIPE_WEBHOOK_TOLERANCE", 300, minimum=0, maximum=MAX_SECONDS),
            gateway_host=env.text("GATEWAY_HOST", "0.0.0.0"),
            gateway_port=env.integer("GATEWAY_PORT", 8000, minimum=0, maximum=_MAX_PORT),
            gateway_max_body_bytes=env.integer("GATEWAY_MAX_BODY_BYTES", 1_048_576, minimum=1),
            # below about 1 KiB a genuine Stripe delivery's headers would not fit
            gateway_max_header_bytes=env.integer("GATEWAY_MAX_HEADER_BYTES", 65_536, minimum=1024),
            gateway_client_timeout=env.seconds("GATEWAY_CLIENT_TIMEOUT", 10.0),
            gateway_keepalive_timeout=env.seconds("GATEWAY_KEEPALIVE_TIMEOUT", 75.0),
            gateway_publish_timeout=env.seconds("GATEWAY_PUBLISH_TIMEOUT", 10.0),
            gateway_retry_after=env.integer("GATEWAY_RETRY_AFTER", 5, minimum=0, maximum=MAX_SECONDS),
            producer_linger_ms=env.integer("PRODUCER_LINGER_MS", 2, minimum=0),
            producer_max_batch_size=env.integer("PRODUCER_MAX_BATCH_SIZE", 1_048_576, minimum=1),
            producer_batch_records=env.integer("PRODUCER_BATCH_RECORDS", 16, minimum=1, maximum=1_000_000),
            producer_compression=env.choice("PRODUCER_COMPRESSION", "lz4", COMPRESSION_CODECS),
            topic_prefix=prefix,
            topic_partitions=env.integer("TOPIC_PARTITIONS", 8, minimum=1),
            topic_replication_factor=replication,
            topic_min_insync_replicas=min_insync,
            worker_web_port=env.integer("WORKER_WEB_PORT", 6066, minimum=0, maximum=_MAX_PORT),
            worker_web_bind=env.text("WORKER_WEB_BIND", "0.0.0.0"),
            worker_web_host=env.optional("WORKER_WEB_HOST"),
            worker_app_id=env.text("HOOKSTREAM_APP_ID", "hookstream"),
            worker_max_inflight=env.integer("WORKER_MAX_INFLIGHT", 1000, minimum=1),
            worker_rebalance_timeout=env.seconds("WORKER_REBALANCE_TIMEOUT", 60.0),
            worker_session_timeout=env.seconds("WORKER_SESSION_TIMEOUT", 30.0),
            worker_producer_max_batch_size=env.integer("WORKER_PRODUCER_MAX_BATCH_SIZE", 1_048_576, minimum=1),
            worker_lag_interval=env.seconds("WORKER_LAG_INTERVAL", 5.0),
            handler_modules=tuple(
                m.strip() for m in env.text("HOOKSTREAM_HANDLERS", "handlers").split(",") if m.strip()
            ),
            handler_max_attempts=env.integer("HANDLER_MAX_ATTEMPTS", 5, minimum=1),
            handler_retry_backoff=env.seconds("HANDLER_RETRY_BACKOFF", 0.2),
            handler_retry_max_backoff=env.seconds("HANDLER_RETRY_MAX_BACKOFF", 30.0),
            handler_timeout=env.seconds("HANDLER_TIMEOUT", 30.0),
            state_store=env.text("STATE_STORE", "memory://"),
            worker_data_dir=env.optional("WORKER_DATA_DIR"),
            log_level=env.choice("LOG_LEVEL", "INFO", _LOG_LEVELS),
        )
        if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
            raise ConfigError(
                "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE: a client certificate needs its key, and the key its "
                "certificate (set both, or neither)"
            )
        if settings.kafka_sasl and (settings.kafka_sasl_username is None or settings.kafka_sasl_password is None):
            # else each client fails its first connection in its own words, the gateway's only in its log
            raise ConfigError(
                f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: KAFKA_SECURITY_PROTOCOL is "
                f"{settings.kafka_security_protocol}, which logs in with both (set them, or KAFKA_SASL_PASSWORD_FILE)"
            )
        if settings.kafka_ssl_certfile is not None and not settings.kafka_tls:
            raise ConfigError(
                f"KAFKA_SSL_CERTFILE: a client certificate is sent only over TLS, and KAFKA_SECURITY_PROTOCOL is "
                f"{settings.kafka_security_protocol} (use SSL, or SASL_SSL)"
            )
        if settings.gateway_publish_timeout_ms < 1:  # librdkafka reads 0 as "never time out"
            timeout = settings.gateway_publish_timeout
            raise ConfigError(f"GATEWAY_PUBLISH_TIMEOUT: must be at least 0.001, got {timeout}")
        if settings.producer_linger_ms >= settings.gateway_publish_timeout_ms:
            # librdkafka refuses to start otherwise: a record would time out before its batch was sent
            raise ConfigError(
                f"PRODUCER_LINGER_MS: must be below GATEWAY_PUBLISH_TIMEOUT "
                f"({settings.gateway_publish_timeout_ms} ms), got {settings.producer_linger_ms}"
            )
        return settings

    @property
    def gateway_publish_timeout_ms(self) -> int:
        """GATEWAY_PUBLISH_TIMEOUT as librdkafka's ``message.timeout.ms``."""
        return int(self.gateway_publish_timeout * 1000)


def split_secrets(text: str) -> tuple[str, ...]:
    """Signing secrets separated by commas or whitespace: a mounted file may hold one per line, and no secret has
    a comma or a space in it."""
    return tuple(secret for secret in _SECRETS_SEPARATOR.split(text) if secret)


def is_configured(name: str, environ: Mapping[str, str]) -> bool:
    """True when the environment gives ``name`` a value, directly or through ``NAME_FILE``, as the settings read
    it (an empty variable is unset; an empty or unreadable file is a ConfigError)."""
    return _Env(environ).optional(name) is not None


class _Env:
    """Typed reads of environment variables, with ``NAME_FILE`` support and errors that name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        path = self._environ.get(f"{name}_FILE")
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    content = f.read().strip()
            except OSError as exc:
                raise ConfigError(f"{name}_FILE: cannot read {path!r}: {exc.strerror}") from None
            if not content:  # a secret mounted empty: never fall back to a default (the public development secret)
                raise ConfigError(f"{name}_FILE: {path!r} is empty")
            return content
        value = self._environ.get(name)
        return value if value not in (None, "") else None

    def text(self, name: str, default: str) -> str:
        value = self.optional(name)
        return default if value is None else value

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}: must be at most {maximum}, got {value}")
        return value

    def seconds(self, name: str, default: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
        if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
            raise ConfigError(f"{name}: must be above zero and at most {MAX_SECONDS}, got {raw!r}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``, in any case (as spelled in ``choices``)."""
        value = self.text(name, default).strip()
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")

    def flag(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
